"""W4A16 checkpoints from the real tool (llm-compressor) and their GPTQ/AWQ conversions.

Fast tests use a synthetic compressed-tensors checkpoint: converting it to GPTQ and AWQ
(benchmarks/convert_w4a16_checkpoint.py) must not change a single logit, since the codes are
the same. Slow tests use llm-compressor's own W4A16 checkpoints (GPTQ and AWQ modifiers, made
once in the tool venv by benchmarks/quantized_checkpoints.py): our logits must match HF
transformers loading the same checkpoint (in the tool venv, where the compressed-tensors
package decompresses it), and their converted GPTQ/AWQ copies must match ours.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import make_tiny_checkpoint
from tests.models.test_hf_parity import _run
from tests.quantization.w4a16_checkpoints import write_w4a16_checkpoint
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.model_executor.model_loader import get_model

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "convert_w4a16_checkpoint", REPO / "benchmarks" / "convert_w4a16_checkpoint.py"
)
convert_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_module)
convert = convert_module.convert


def _logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    config = EngineArgs(
        model=str(path), dtype="float32", attention_backend="naive"
    ).create_engine_config()
    return _run(get_model(config), ids, 0, len(ids))


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_and_awq_conversions_give_the_same_logits(tmp_path, symmetric):
    src = make_tiny_checkpoint(tmp_path / "float", "llama")
    ct = write_w4a16_checkpoint(src, tmp_path / "ct", "compressed-tensors", 32, symmetric)
    ids = torch.randint(3, 384, (9,), generator=torch.Generator().manual_seed(4))
    expected = _logits(ct, ids)
    for fmt in ("gptq", "awq"):
        out = convert(ct, tmp_path / fmt, fmt)
        qc = json.loads((out / "config.json").read_text())["quantization_config"]
        assert qc["quant_method"] == fmt and "compressed-tensors" in qc["converted_from"]
        torch.testing.assert_close(_logits(out, ids), expected, atol=1e-5, rtol=0)


def test_conversion_refuses_a_checkpoint_that_is_not_w4a16(tmp_path):
    src = make_tiny_checkpoint(tmp_path / "float", "llama")
    with pytest.raises(ValueError, match="convert: the source must be a compressed-tensors"):
        convert(src, tmp_path / "out", "gptq")


# ---- checkpoints made by llm-compressor (slow: made once, then cached) -------------------------

HF_PEER = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = torch.load(sys.argv[2])
with torch.no_grad():
    logits = [model(x.unsqueeze(0)).logits[0] for x in (ids if isinstance(ids, list) else [ids])]
torch.save(logits if isinstance(ids, list) else logits[0], sys.argv[3])
"""


def hf_logits_in_tool_venv(path: Path, ids, tmp_path: Path):
    """HF transformers' logits for a compressed-tensors checkpoint (tool venv: transformers
    with the compressed-tensors package, which decompresses pack-quantized weights). `ids` is
    one prompt's token ids, or a list of prompts (one model load for all: SmolLM2 takes ~10 s)."""
    from benchmarks.quantized_checkpoints import ensure_tool_venv

    python = ensure_tool_venv()
    torch.save(ids, tmp_path / "ids.pt")
    cmd = [str(python), "-c", HF_PEER, str(path), str(tmp_path / "ids.pt"), str(tmp_path / "o.pt")]
    subprocess.run(cmd, check=True, capture_output=True)
    return torch.load(tmp_path / "o.pt")


@pytest.mark.slow
@pytest.mark.parametrize("symmetric", [True, False])
def test_our_pack_quantized_layout_is_the_one_compressed_tensors_reads(tmp_path, symmetric):
    """The synthetic writer and our reader agree with the compressed-tensors package itself."""
    src = make_tiny_checkpoint(tmp_path / "float", "llama")
    ct = write_w4a16_checkpoint(src, tmp_path / "ct", "compressed-tensors", 32, symmetric)
    ids = torch.randint(3, 384, (9,), generator=torch.Generator().manual_seed(4))
    expected = hf_logits_in_tool_venv(ct, ids, tmp_path)
    assert expected.std() > 0.1
    torch.testing.assert_close(_logits(ct, ids), expected, atol=1e-3, rtol=0)


@pytest.mark.slow
# llm-compressor's w4a16-awq recipe took ~7 min per smoothing mapping of the tiny model on the
# busy 2-core machine (an hour in all); it is checked on SmolLM2 instead (below).
@pytest.mark.parametrize("recipe", ["w4a16-gptq", "w4a16-gptq-asym"])
def test_llmcompressor_w4a16_logits_match_hf_and_the_converted_formats(recipe, tmp_path):
    from tests.quantization.llmcompressor_checkpoints import (
        cached_or_skip,
        llmcompressor_checkpoint,
    )

    cached_or_skip(f"{recipe}-tiny", "about 5 minutes")
    path = llmcompressor_checkpoint(recipe, "tiny")
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized"
    ids = torch.randint(3, 512, (16,), generator=torch.Generator().manual_seed(5))
    ours = _logits(path, ids)
    expected = hf_logits_in_tool_venv(path, ids, tmp_path)
    assert expected.std() > 0.1
    torch.testing.assert_close(ours, expected, atol=1e-3, rtol=0)
    for fmt in ("gptq", "awq"):
        converted = convert(path, tmp_path / fmt, fmt)
        torch.testing.assert_close(_logits(converted, ids), ours, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_autoawq_checkpoint_matches_hf_on_autoawqs_own_dequantization(tmp_path):
    """A checkpoint written by AutoAWQ itself (interleaved nibble order, true zeros)."""
    from benchmarks.autoawq_checkpoints import autoawq_checkpoint, hf_logits
    from tests.quantization.llmcompressor_checkpoints import cached_or_skip

    cached_or_skip("awq-autoawq-tiny", "about 10 minutes with AutoAWQ's own venv")
    path = autoawq_checkpoint("tiny")
    assert (
        json.loads((path / "config.json").read_text())["quantization_config"]["version"] == "gemm"
    )
    ids = torch.randint(3, 512, (16,), generator=torch.Generator().manual_seed(6))
    expected = hf_logits(path, ids, tmp_path)
    assert expected.std() > 0.1
    torch.testing.assert_close(_logits(path, ids), expected, atol=1e-3, rtol=0)


@pytest.mark.slow
def test_smollm2_w4a16_keeps_most_next_token_choices_of_float32(tmp_path):
    """SmolLM2 with every decoder linear in 4-bit groups of 64 (round-to-nearest, the crudest
    W4A16) still picks float32's next token most of the time (teacher-forced, 128 tokens of
    English; measured 0.59). A wrong nibble order or zero point would give ~0."""
    from pydoc_data.topics import topics

    from transformers import AutoTokenizer

    from benchmarks.quantized_checkpoints import source_model

    src = source_model("smollm2")
    ids = AutoTokenizer.from_pretrained(src)(topics[sorted(topics)[5]])["input_ids"][:128]
    ids = torch.tensor(ids)
    ct = write_w4a16_checkpoint(src, tmp_path / "ct", "compressed-tensors", 64, False)
    expected = _logits(src, ids).argmax(-1)
    agreement = (_logits(ct, ids).argmax(-1) == expected).float().mean().item()
    assert agreement >= 0.5, agreement


AWQ_PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "A GPU is a processor that",
]
# 30 layers of float32 summed in another order than HF's: measured at most 1e-4 (logits of std
# ~5); the round-to-nearest checkpoint of the same weights is 11-18 away.
AWQ_ATOL = 1e-3


@pytest.mark.slow
def test_llmcompressor_awq_smollm2_matches_hf_compressed_tensors(tmp_path):
    """SmolLM2 through llm-compressor's AWQModifier (per-channel scales folded into the RMSNorms
    and up_proj, then int4 groups of 64 with zero points, pack-quantized): our logits equal HF
    transformers' + compressed-tensors' on the same files, on a few English prompts."""
    from transformers import AutoTokenizer

    from tests.quantization.llmcompressor_checkpoints import smollm2_checkpoint_or_skip

    path = smollm2_checkpoint_or_skip("w4a16-awq")
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (qc["format"], weights["group_size"], weights["symmetric"]) == (
        "pack-quantized",
        64,
        False,
    )
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [torch.tensor(tok(p)["input_ids"]) for p in AWQ_PROMPTS]
    expected = hf_logits_in_tool_venv(path, prompts, tmp_path)
    config = EngineArgs(
        model=str(path), dtype="float32", attention_backend="naive"
    ).create_engine_config()
    model = get_model(config)
    for i, (ids, want) in enumerate(zip(prompts, expected)):
        got = _run(model, ids, 0, len(ids), req_id=f"p{i}")
        assert want.std() > 1.0
        torch.testing.assert_close(got, want, atol=AWQ_ATOL, rtol=0)
        assert torch.equal(got.argmax(-1), want.argmax(-1))
