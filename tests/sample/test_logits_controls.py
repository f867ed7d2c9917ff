"""logit_bias, allowed_token_ids and bad_words, each against HF transformers' own processors.

HF's peers: SequenceBiasLogitsProcessor (`sequence_bias`), prefix_allowed_tokens_fn, and
NoBadWordsLogitsProcessor (`bad_words_ids`). Greedy on the tiny model, token for token; every
case also checks that the control changed the output, so a no-op could not pass.
"""

from __future__ import annotations

import pytest
import torch

from vllm_mini import LLM, SamplingParams

PROMPT = [5, 9, 13, 17, 21, 25, 29, 33]
N = 12


@pytest.fixture(scope="module")
def setup(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    hf.generation_config.eos_token_id = None  # like ignore_eos
    llm = LLM(str(tiny_llama_dir))

    def ours(**controls) -> list[int]:
        params = SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True, **controls)
        return (
            llm.generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)[0]
            .outputs[0]
            .token_ids
        )

    def theirs(**kwargs) -> list[int]:
        with torch.inference_mode():
            out = hf.generate(
                input_ids=torch.tensor([PROMPT]), max_new_tokens=N, do_sample=False, **kwargs
            )
        return out[0, len(PROMPT) :].tolist()

    plain = ours()
    assert plain == theirs()
    return ours, theirs, plain


def test_logit_bias_matches_hf_sequence_bias(setup):
    ours, theirs, plain = setup
    token = 123
    got = ours(logit_bias={token: 6.0, plain[0]: -3.0})
    assert got == theirs(sequence_bias={(token,): 6.0, (plain[0],): -3.0})
    assert got != plain


def test_allowed_token_ids_match_hf_prefix_allowed_tokens(setup):
    ours, theirs, plain = setup
    allowed = list(range(40, 60))
    got = ours(allowed_token_ids=allowed)
    assert got == theirs(prefix_allowed_tokens_fn=lambda batch, ids: allowed)
    assert set(got) <= set(allowed) and got != plain


def test_bad_words_single_and_multi_token_match_hf(setup):
    ours, theirs, plain = setup
    single = f"w{plain[2]}"  # the tiny tokenizer's word for that token: one token
    got = ours(bad_words=[single])
    assert got == theirs(bad_words_ids=[[plain[2]]])
    assert plain[2] not in got
    pair = f"w{plain[3]} w{plain[4]}"  # banned only right after its first token
    got = ours(bad_words=[pair])
    assert got == theirs(bad_words_ids=[[plain[3], plain[4]]])
    assert got[:4] == plain[:4] and got[4] != plain[4]


@pytest.mark.parametrize(
    ("controls", "message"),
    [
        ({"logit_bias": {10**6: 1.0}}, r"logit_bias token ids must be in \[0, 384\)"),
        ({"logit_bias": {5: 500.0}}, r"logit_bias values must be in \[-100, 100\]"),
        ({"logit_bias": {"x": 1.0}}, "logit_bias keys must be token ids"),
        ({"allowed_token_ids": []}, "allowed_token_ids must be a non-empty list"),
        ({"allowed_token_ids": [1, 999]}, r"allowed_token_ids token ids must be in \[0, 384\)"),
        ({"bad_words": [""]}, "bad_words must be non-empty strings"),
    ],
)
def test_bad_controls_name_the_field(tiny_llama_dir, controls, message):
    llm = LLM(str(tiny_llama_dir))
    with pytest.raises(ValueError, match=message):
        llm.generate([{"prompt_token_ids": PROMPT}], SamplingParams(**controls), use_tqdm=False)


def test_server_passes_logit_bias_and_vllm_extras(tiny_llama_dir, setup):
    from tests.entrypoints.server_utils import serve, tiny_engine

    ours, _, _ = setup
    expected = ours(logit_bias={77: 7.0}, allowed_token_ids=list(range(60, 90)))
    with serve(tiny_engine(tiny_llama_dir)) as server:
        client = server.client()
        out = client.completions.create(
            model=client.models.list().data[0].id,
            prompt=" ".join(f"w{t}" for t in PROMPT[1:]),  # the tokenizer adds BOS (token 1)
            max_tokens=N,
            temperature=0.0,
            logit_bias={"77": 7},
            extra_body={"ignore_eos": True, "allowed_token_ids": list(range(60, 90))},
        )
        bad = server.post(
            "/v1/completions",
            json={"prompt": "w5", "max_tokens": 2, "logit_bias": {"5": 1000}},
        )
    text = out.choices[0].text.split()
    assert all(60 <= int(w[1:]) < 90 for w in text)
    assert bad.status_code == 400 and "logit_bias" in bad.text
    assert expected  # the offline run under the same controls produced tokens too


@pytest.mark.parametrize(
    "engine_kwargs", [{}, {"max_num_batched_tokens": 8, "enable_prefix_caching": True}]
)
def test_prompt_logprobs_match_hf_log_softmax(tiny_llama_dir, engine_kwargs):
    """Every prompt token's logprob, rank and top-3 equal HF's log-softmax over the prompt, also
    when the prompt is prefilled in chunks and when a cached prefix exists (it is recomputed)."""
    from transformers import AutoModelForCausalLM

    prompt = list(range(20, 50))
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.inference_mode():
        ref = hf(torch.tensor([prompt])).logits[0].float().log_softmax(-1)  # [30, vocab]
    llm = LLM(str(tiny_llama_dir), **engine_kwargs)
    params = SamplingParams(max_tokens=2, prompt_logprobs=3)
    for _ in range(2):  # the second time its blocks are cached
        out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
        assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
        for p, entry in enumerate(out.prompt_logprobs[1:]):
            token = prompt[p + 1]
            assert entry[token].logprob == pytest.approx(float(ref[p, token]), abs=1e-4)
            assert entry[token].rank == int((ref[p] > ref[p, token]).sum()) + 1
            assert set(ref[p].topk(3).indices.tolist()) <= set(entry)  # the top-3 too
    with pytest.raises(ValueError, match=r"prompt_logprobs must be in \[0, 20\]"):
        SamplingParams(prompt_logprobs=50)
