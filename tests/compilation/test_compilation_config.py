"""CompilationConfig: defaults like vLLM's, errors that name the field and the allowed values."""

from __future__ import annotations

import pytest

from vllm_mini.config import CompilationConfig, CompilationMode, CUDAGraphMode
from vllm_mini.config.compilation import default_capture_sizes
from vllm_mini.engine.arg_utils import EngineArgs


def test_default_capture_sizes_are_1_2_4_then_steps_of_8_up_to_max_num_seqs():
    assert default_capture_sizes(128) == [1, 2, 4, *range(8, 129, 8)]
    assert default_capture_sizes(20) == [1, 2, 4, 8, 16]
    assert default_capture_sizes(3) == [1, 2]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"mode": 7}, ["compilation_config.mode", "0 (none)", "3"]),
        ({"mode": 2}, ["compilation_config.mode 2", "DYNAMO_TRACE_ONCE", "not implemented"]),
        ({"mode": "3"}, ["compilation_config.mode"]),
        ({"cudagraph_mode": "sometimes"}, ["cudagraph_mode", "FULL_DECODE_ONLY", "PIECEWISE"]),
        ({"cudagraph_mode": "PIECEWISE"}, ["cudagraph_mode PIECEWISE", "not implemented"]),
        ({"cudagraph_capture_sizes": [4, 0]}, ["cudagraph_capture_sizes", ">= 1"]),
        ({"cudagraph_capture_sizes": 8}, ["cudagraph_capture_sizes", "list"]),
    ],
)
def test_invalid_values_name_the_field_and_the_allowed_values(kwargs, words):
    with pytest.raises(ValueError) as err:
        CompilationConfig(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_from_cli_takes_an_int_a_dict_or_json_and_rejects_unknown_keys():
    assert CompilationConfig.from_cli(3).mode == CompilationMode.VLLM_COMPILE
    assert CompilationConfig.from_cli("0").mode == CompilationMode.NONE
    cfg = CompilationConfig.from_cli('{"mode": 1, "cudagraph_mode": "full_decode_only"}')
    assert (cfg.mode, cfg.cudagraph_mode) == (1, CUDAGraphMode.FULL_DECODE_ONLY.value)
    with pytest.raises(ValueError, match="unknown compilation_config keys"):
        CompilationConfig.from_cli({"level": 3})


def test_enforce_eager_wins_and_auto_values_resolve_for_the_device(tiny_llama_dir):
    common = {"model": str(tiny_llama_dir), "max_num_seqs": 20, "device": "cpu"}
    cfg = EngineArgs(**common, compilation_config=3, enforce_eager=True).create_engine_config()
    cc = cfg.compilation_config
    assert (cc.mode, cc.cudagraph_mode) == (0, "NONE")
    auto = EngineArgs(**common).create_engine_config().compilation_config
    assert auto.cudagraph_mode == "NONE"  # nothing to capture on CPU
    assert auto.cudagraph_capture_sizes == [1, 2, 4, 8, 16]
    sized = {"cudagraph_capture_sizes": [64, 2, 2, 8]}
    cc = EngineArgs(**common, compilation_config=sized).create_engine_config().compilation_config
    assert cc.cudagraph_capture_sizes == [2, 8]  # sorted, unique, none above max_num_seqs
