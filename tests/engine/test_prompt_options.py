"""truncate_prompt_tokens and cache_salt: two of vLLM's per-request prompt options."""

from __future__ import annotations

import pytest

from vllm_mini import LLM, SamplingParams

PROMPT = list(range(10, 60))  # 50 tokens: three full 16-token blocks


def test_truncate_prompt_tokens_keeps_the_end(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir))
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    cut = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, truncate_prompt_tokens=10)
    whole, truncated, tail = llm.generate(
        [{"prompt_token_ids": PROMPT}] * 2 + [{"prompt_token_ids": PROMPT[-10:]}],
        [greedy, cut, greedy],
        use_tqdm=False,
    )
    assert truncated.prompt_token_ids == PROMPT[-10:]
    assert truncated.outputs[0].token_ids == tail.outputs[0].token_ids
    assert truncated.outputs[0].token_ids != whole.outputs[0].token_ids
    for bad in (0, -2):
        with pytest.raises(ValueError, match="truncate_prompt_tokens must be >= 1 or -1"):
            SamplingParams(truncate_prompt_tokens=bad)


def test_cache_salt_separates_prefix_cache_hits(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), enable_prefix_caching=True)
    stats = llm.llm_engine.engine_core.scheduler.kv_cache_manager.prefix_cache_stats
    params = SamplingParams(max_tokens=2)
    hits = []
    for salt in ("alice", "bob", None, "alice"):
        prompt = {"prompt_token_ids": PROMPT} | ({"cache_salt": salt} if salt else {})
        before = stats.hits
        llm.generate([prompt], params, use_tqdm=False)
        hits.append(stats.hits - before)
    # Only the second "alice" request finds the first one's three blocks.
    assert hits == [0, 0, 0, 48]
    with pytest.raises(ValueError, match="cache_salt must be a non-empty string"):
        llm.generate([{"prompt_token_ids": PROMPT, "cache_salt": ""}], params, use_tqdm=False)


def test_server_cache_salt_reaches_the_prefix_cache(tiny_llama_dir):
    from tests.entrypoints.server_utils import serve, tiny_engine

    engine = tiny_engine(tiny_llama_dir)
    prompt = " ".join(f"w{t}" for t in PROMPT)
    with serve(engine) as server:
        model = server.client().models.list().data[0].id
        hits = []
        for salt in ("alice", "bob", "alice"):
            before = engine.get_stats()["prefix_cache_hits"]
            server.client().completions.create(
                model=model, prompt=prompt, max_tokens=2, extra_body={"cache_salt": salt}
            )
            hits.append(engine.get_stats()["prefix_cache_hits"] - before)
        bad = server.post("/v1/completions", json={"prompt": "w5", "cache_salt": ""})
    assert hits[0] == hits[1] == 0 and hits[2] > 0
    assert bad.status_code == 400 and "cache_salt" in bad.text


@pytest.mark.parametrize("n", [1, 2])
def test_output_kind_delta_and_final_only(tiny_llama_dir, n):
    from vllm_mini.engine.arg_utils import EngineArgs
    from vllm_mini.engine.llm_engine import LLMEngine

    engine = LLMEngine.from_engine_args(EngineArgs(model=str(tiny_llama_dir)))
    reference = LLM(str(tiny_llama_dir)).generate(
        [{"prompt_token_ids": PROMPT}],
        SamplingParams(temperature=0.0, max_tokens=12, n=n, stop=[" w200"]),
        use_tqdm=False,
    )[0]

    def run(kind: str) -> list:
        params = SamplingParams(
            temperature=0.0, max_tokens=12, n=n, stop=[" w200"], output_kind=kind
        )
        engine.add_request(kind, {"prompt_token_ids": PROMPT}, params)
        outs = []
        while engine.has_unfinished_requests():
            outs += [o for o in engine.step() if o.request_id == kind]
        return outs

    deltas = run("delta")
    for index in range(n):
        pieces = [c for o in deltas for c in o.outputs if c.index == index]
        assert "".join(c.text for c in pieces) == reference.outputs[index].text
        assert [t for c in pieces for t in c.token_ids] == reference.outputs[index].token_ids
    assert len(deltas) > 1 and deltas[-1].finished
    final = run("final_only")
    assert len(final) == 1 and final[0].finished
    assert [c.text for c in final[0].outputs] == [c.text for c in reference.outputs]
    with pytest.raises(ValueError, match="output_kind must be one of"):
        SamplingParams(output_kind="sometimes")


def test_server_truncate_prompt_tokens(tiny_llama_dir):
    from tests.entrypoints.server_utils import serve, tiny_engine

    words = [f"w{t}" for t in PROMPT]
    offline = LLM(str(tiny_llama_dir)).generate(
        [{"prompt_token_ids": PROMPT[-6:]}],
        SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True),
        use_tqdm=False,
    )[0]
    with serve(tiny_engine(tiny_llama_dir)) as server:
        client = server.client()
        model = client.models.list().data[0].id
        for stream in (False, True):
            kwargs = dict(model=model, prompt=" ".join(words), max_tokens=5, temperature=0.0)
            extra = {"ignore_eos": True, "truncate_prompt_tokens": 6}
            if stream:
                chunks = list(client.completions.create(**kwargs, stream=True,
                              stream_options={"include_usage": True}, extra_body=extra))  # fmt: skip
                text = "".join(c.choices[0].text for c in chunks if c.choices)
                usage = chunks[-1].usage
            else:
                out = client.completions.create(**kwargs, extra_body=extra)
                text, usage = out.choices[0].text, out.usage
            assert text == offline.outputs[0].text
            assert usage.prompt_tokens == 6


def test_server_prompt_logprobs_equal_offline(tiny_llama_dir):
    from tests.entrypoints.server_utils import serve, tiny_engine

    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=2)
    with serve(tiny_engine(tiny_llama_dir)) as server:
        client = server.client()
        text = " ".join(f"w{t}" for t in PROMPT[:12])
        offline = LLM(str(tiny_llama_dir)).generate([text], params, use_tqdm=False)[0]
        out = client.completions.create(
            model=client.models.list().data[0].id,
            prompt=text,
            max_tokens=2,
            temperature=0.0,
            extra_body={"prompt_logprobs": 2},
        )
    served = out.choices[0].model_extra["prompt_logprobs"]
    assert served[0] is None and len(served) == len(offline.prompt_logprobs)
    for mine, theirs in zip(served[1:], offline.prompt_logprobs[1:]):
        assert {int(t): v["logprob"] for t, v in mine.items()} == pytest.approx(
            {t: lp.logprob for t, lp in theirs.items()}
        )
