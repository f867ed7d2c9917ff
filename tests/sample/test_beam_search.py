"""LLM.beam_search against HF `generate(num_beams=...)` on the tiny model."""

from __future__ import annotations

import pytest
import torch

from vllm_mini import LLM
from vllm_mini.entrypoints.beam_search import BeamSearchParams


@pytest.mark.parametrize("width", [2, 4])
def test_beam_search_equals_hf(tiny_llama_dir, width):
    from transformers import AutoModelForCausalLM

    prompt = list(range(5, 25))  # 20 tokens: a full KV block the beams can share
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    hf.generation_config.eos_token_id = None  # no EOS: every beam runs max_tokens
    with torch.inference_mode():
        out = hf.generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=8,
            num_beams=width,
            num_return_sequences=width,
            do_sample=False,
            early_stopping=False,
            length_penalty=1.0,
            output_scores=True,
            return_dict_in_generate=True,
        )
    ref = [seq[len(prompt) :].tolist() for seq in out.sequences]
    llm = LLM(str(tiny_llama_dir), enable_prefix_caching=True)
    params = BeamSearchParams(beam_width=width, max_tokens=8, ignore_eos=True)
    beams = llm.beam_search([{"prompt_token_ids": prompt}], params)[0].sequences
    assert [b.output_token_ids for b in beams] == ref
    scores = [b.cum_logprob for b in beams]
    assert scores == sorted(scores, reverse=True) and len(beams) == width
    # The shared prefixes of the beams came from the prefix cache, not from new prefills.
    assert llm.llm_engine.engine_core.scheduler.kv_cache_manager.prefix_cache_stats.hits > 0


def test_beam_search_params_are_checked():
    with pytest.raises(ValueError, match="beam_width must be an int >= 1"):
        BeamSearchParams(beam_width=0, max_tokens=4)
    with pytest.raises(ValueError, match="temperature must be 0"):
        BeamSearchParams(beam_width=2, max_tokens=4, temperature=0.5)
