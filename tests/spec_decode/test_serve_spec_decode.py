"""`vllm-mini serve --speculative-config ...`: the flag, the same completions, vLLM's counters."""

from __future__ import annotations

import argparse
import json

from tests.entrypoints.server_utils import MAX_MODEL_LEN, scrape, serve, wait_idle
from vllm_mini import LLM, SamplingParams
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.async_llm import AsyncLLM

SPEC = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1,
        "prompt_lookup_max": 2}  # fmt: skip


def test_cli_flag_builds_the_speculative_config(tiny_llama_dir):
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--model", str(tiny_llama_dir), "--speculative-config", json.dumps(SPEC)]
    )
    config = EngineArgs.from_cli_args(args).create_engine_config()
    assert config.speculative_config.method == "ngram"
    assert config.speculative_config.num_speculative_tokens == 3


def test_server_with_speculation_serves_the_plain_completions_and_exports_counters(tiny_llama_dir):
    prompt = "w10 w11 w12 w13 w10 w11 w12 w13 w10 w11"
    reference = LLM(str(tiny_llama_dir), max_model_len=MAX_MODEL_LEN).generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True), use_tqdm=False
    )[0]
    engine = AsyncLLM.from_engine_args(
        EngineArgs(
            model=str(tiny_llama_dir),
            max_model_len=MAX_MODEL_LEN,
            kv_cache_memory_bytes=1 << 22,
            disable_log_stats=True,
            # The target as its own draft: every greedy draft is accepted, so the counters move.
            speculative_config={
                "method": "draft_model",
                "model": str(tiny_llama_dir),
                "num_speculative_tokens": 3,
            },
        )
    )
    with serve(engine) as server:
        out = server.client().completions.create(
            model=server.client().models.list().data[0].id,
            prompt=prompt,
            max_tokens=24,
            temperature=0.0,
            extra_body={"ignore_eos": True},
        )
        assert out.choices[0].text == reference.outputs[0].text
        wait_idle(engine)  # every KV block back in the pool
        samples = scrape(server.url)
    drafted = [v for k, v in samples.items() if k.startswith("vllm:spec_decode_num_draft_tokens")]
    accepted = [
        v for k, v in samples.items() if k.startswith("vllm:spec_decode_num_accepted_tokens_total")
    ]
    assert drafted and drafted[0] > 0
    assert accepted and accepted[0] == drafted[0] > 0
    per_pos = {k: v for k, v in samples.items() if "per_pos" in k and "position=0" in k}
    assert per_pos and next(iter(per_pos.values())) > 0
