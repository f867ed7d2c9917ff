"""The model runner's persistent batch on live runs: every step's inputs equal the list-based
reference built from the runner's per-request state, and outputs (seeded sampling, penalties,
min_tokens, logprobs, n > 1) do not depend on preemption, chunking or batch composition."""

from __future__ import annotations

import torch

from vllm_mini import LLM, SamplingParams
from vllm_mini.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput
from vllm_mini.model_executor.sampling_metadata import SamplingMetadata
from vllm_mini.worker.model_runner import compute_slot_mapping

FEATURES = [
    SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, logprobs=2),
    SamplingParams(temperature=0.9, seed=11, max_tokens=10, ignore_eos=True, top_p=0.9),
    SamplingParams(temperature=1.0, seed=12, max_tokens=10, top_k=20, repetition_penalty=1.3),
    SamplingParams(temperature=0.8, seed=13, max_tokens=10, min_tokens=6, frequency_penalty=0.5),
    SamplingParams(temperature=1.0, seed=14, max_tokens=10, n=2, min_p=0.05, logprobs=1),
    SamplingParams(temperature=0.0, max_tokens=10, presence_penalty=1.0, ignore_eos=True),
]


def _prompts(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    return [
        {"prompt_token_ids": torch.randint(3, 384, (int(L),), generator=g).tolist()}
        for L in torch.randint(5, 45, (n,), generator=g)
    ]


def _run(llm: LLM) -> list:
    """Per request and sample: the tokens, and per token its logprob entries (the sampled token
    and the request's own top-k; the runner may return more when another request asks for more)."""
    outs = llm.generate(_prompts(len(FEATURES)), FEATURES, use_tqdm=False)
    result = []
    for out, params in zip(outs, FEATURES):
        k = params.logprobs
        for c in out.outputs:
            entries = [
                {t: lp for t, lp in d.items() if t == token or lp.rank <= k}
                for token, d in zip(c.token_ids, c.logprobs or [])
            ]
            result.append((c.token_ids, entries))
    return result


def _close(a, b) -> bool:
    """Same tokens and logprob entries; logprobs equal up to float noise of another batch shape."""
    (tokens_a, lps_a), (tokens_b, lps_b) = a, b
    if tokens_a != tokens_b or [d.keys() for d in lps_a] != [d.keys() for d in lps_b]:
        return False
    return all(
        abs(da[t].logprob - db[t].logprob) < 1e-4 and da[t].rank == db[t].rank
        for da, db in zip(lps_a, lps_b)
        for t in da
    )


def test_outputs_do_not_depend_on_preemption_or_chunking(tiny_llama_dir):
    roomy = _run(LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22))
    tight = LLM(
        str(tiny_llama_dir),
        block_size=4,
        num_gpu_blocks_override=24,  # a few requests' worth: preemption happens
        max_num_batched_tokens=16,  # prompts are chunked, running requests sit steps out
    )
    worker, preempted, seeds = tight.llm_engine.engine_core.worker, set(), {}
    execute = worker.execute_model

    def spy(so, grammar_output=None):
        preempted.update(so.preempted_req_ids)
        seeds.update({new.req_id: new.sampling_params.seed for new in so.scheduled_new_reqs})
        return execute(so, grammar_output)

    worker.execute_model = spy
    got = _run(tight)
    assert any(seeds[r] is not None for r in preempted), "no seeded request was preempted"
    assert len(roomy) == len(FEATURES) + 1 and all(_close(a, b) for a, b in zip(roomy, got))


def test_every_step_matches_the_list_reference(tiny_llama_dir, monkeypatch):
    llm = LLM(
        str(tiny_llama_dir), block_size=4, max_num_batched_tokens=16, num_gpu_blocks_override=24
    )
    core = llm.llm_engine.engine_core
    runner = core.worker.model_runner
    prepare, sampler = runner._prepare_inputs, runner.sampler.forward
    checked = {"steps": 0, "samples": 0}
    current: dict = {}

    def spy_prepare(so, req_ids):
        ids, positions, meta = prepare(so, req_ids)
        states = [runner.requests[r] for r in req_ids]
        want_ids, want_pos, want_slots, qsl = [], [], [], [0]
        for s in states:
            start, end = (
                s.num_computed_tokens,
                s.num_computed_tokens + so.num_scheduled_tokens[s.req_id],
            )
            want_ids += (s.prompt_token_ids + s.output_token_ids)[start:end]
            want_pos += range(start, end)
            want_slots += compute_slot_mapping(s.block_ids, start, end, 4)
            qsl.append(qsl[-1] + end - start)
        width = max(len(s.block_ids) for s in states)
        table = [s.block_ids + [0] * (width - len(s.block_ids)) for s in states]
        assert ids.tolist() == want_ids and positions.tolist() == want_pos
        assert meta.slot_mapping.tolist() == want_slots and meta.block_table.tolist() == table
        assert meta.query_start_loc_cpu == qsl == meta.query_start_loc.tolist()
        assert (
            meta.seq_lens_cpu
            == [qsl[i + 1] - qsl[i] + s.num_computed_tokens for i, s in enumerate(states)]
            == meta.seq_lens.tolist()
        )
        current.update(states=states, meta=meta)
        checked["steps"] += 1
        return ids, positions, meta

    def spy_sampler(logits, md):
        meta, states = current["meta"], current["states"]
        rows = [i for i, s in enumerate(states) if meta.seq_lens_cpu[i] >= s.num_tokens]
        chosen = [states[i] for i in rows]
        want = SamplingMetadata.from_params(
            params=[s.sampling_params for s in chosen],
            prompt_token_ids=[s.prompt_token_ids for s in chosen],
            output_token_ids=[s.output_token_ids for s in chosen],
            generators={j: s.generator for j, s in enumerate(chosen) if s.generator},
            vocab_size=runner.model_config.vocab_size,
            device=torch.device("cpu"),
        )
        for name, value in vars(want).items():
            other = getattr(md, name)
            if isinstance(value, torch.Tensor):
                assert torch.equal(other, value), name
            elif name == "generators":
                assert {k: id(g) for k, g in other.items()} == {k: id(g) for k, g in value.items()}
            else:
                assert other == value, name
        checked["samples"] += 1
        return sampler(logits, md)

    monkeypatch.setattr(runner, "_prepare_inputs", spy_prepare)
    monkeypatch.setattr(runner.sampler, "forward", spy_sampler)
    llm.generate(_prompts(len(FEATURES)), FEATURES, use_tqdm=False)
    assert checked["steps"] > 10 and checked["samples"] > 10
    assert llm.llm_engine.get_stats()["num_preemptions"] > 0
    assert runner.input_batch.num_reqs == 0 or not core.scheduler.has_requests()


def _so(new=(), cached=(), finished=()) -> SchedulerOutput:
    """A hand-made schedule: new = (req_id, prompt, block_ids, n), cached = (req_id, computed, n)."""
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    return SchedulerOutput(
        scheduled_new_reqs=[NewRequestData(r, p, [], greedy, b, 0) for r, p, b, _ in new],
        scheduled_cached_reqs=CachedRequestData(
            [r for r, _, _ in cached], [[] for _ in cached], [c for _, c, _ in cached]
        ),
        num_scheduled_tokens={r: n for r, *_, n in new} | {r: n for r, _, n in cached},
        total_num_scheduled_tokens=sum(x[-1] for x in [*new, *cached]),
        finished_req_ids=set(finished),
        preempted_req_ids=set(),
    )


def test_request_that_sits_out_a_step_reenters_from_its_state(tiny_llama_dir):
    """vLLM's scheduler may skip a running request for a step (token budget spent); the runner
    then drops its row but keeps its state, and puts it back when it is scheduled again."""
    a, b = [5, 6, 7, 8, 9, 10], [20, 21, 22, 23, 24]
    new = [("A", a, [0, 1], 6), ("B", b, [2, 3], 5)]

    def run(schedules):
        llm = LLM(str(tiny_llama_dir), block_size=4, kv_cache_memory_bytes=1 << 22)
        runner = llm.llm_engine.engine_core.worker.model_runner
        outs = [runner.execute_model(so) for so in schedules]
        return runner, [dict(zip(o.req_ids, o.sampled_token_ids)) for o in outs]

    _, together = run([_so(new), _so(cached=[("A", 6, 1), ("B", 5, 1)])])
    runner, apart = run(
        [_so(new), _so(cached=[("A", 6, 1)]), _so(cached=[("A", 7, 1), ("B", 5, 1)])]
    )
    assert apart[1] == {"A": together[1]["A"]}  # B sat out: not in the batch, not in the output
    assert apart[2]["B"] == together[1]["B"]  # back in, from where it stopped
    assert sorted(runner.input_batch.req_ids) == ["A", "B"]
    runner.execute_model(_so(finished=["A", "B"]))
    assert runner.input_batch.num_reqs == 0 and not runner.requests
