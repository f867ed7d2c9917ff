"""The step trace (vllm_mini/engine/trace.py) against the live engine it records.

Peers: the KV cache manager's own block tables and block pool, the scheduler's output, and the
RequestOutputs the engine returns. Every check runs inside the step loop, so a recorder that
snapshots the wrong moment (before/after a free, a preemption or a finish) fails here.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from vllm_mini import LLM, SamplingParams
from vllm_mini.engine.trace import StepTrace, Trace, TraceRecorder


def words(start: int, n: int) -> str:
    """A prompt of `n` distinct words of the tiny word-level vocabulary (w3..w383)."""
    return " ".join(f"w{3 + (start + i) % 380}" for i in range(n))


def make_llm(model_dir, **engine_args) -> LLM:
    args = dict(block_size=4, num_gpu_blocks_override=64, max_num_seqs=4, max_num_batched_tokens=32)
    return LLM(str(model_dir), **{**args, **engine_args})


def run(
    llm: LLM,
    prompts: list[str],
    max_tokens: list[int],
    arrival_interval: int = 0,
    check: Callable[[StepTrace], None] | None = None,
) -> tuple[Trace, dict[str, str], list[set[str]]]:
    """Drive the engine step by step with a recorder.

    Returns the trace, the final texts, and per step the requests that sampled a token (the
    engine returns an output only for those).
    """
    engine = llm.llm_engine
    recorder = TraceRecorder(engine)
    engine.trace_recorder = recorder
    pending = list(enumerate(zip(prompts, max_tokens)))
    texts: dict[str, str] = {}
    sampled: list[set[str]] = []
    steps = 0
    while pending or engine.has_unfinished_requests():
        if pending and (arrival_interval == 0 or steps % arrival_interval == 0):
            batch = pending if arrival_interval == 0 else pending[:1]
            for i, (prompt, n) in batch:
                params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
                engine.add_request(f"r{i}", prompt, params)
            pending = pending[len(batch) :]
        outputs = engine.step()
        sampled.append({out.request_id for out in outputs})
        for out in outputs:
            if out.finished:
                texts[out.request_id] = out.outputs[0].text
        steps += 1
        assert len(recorder.trace.steps) == steps
        if check is not None:
            check(recorder.trace.steps[-1])
    engine.trace_recorder = None
    return recorder.trace, texts, sampled


def test_recorded_block_tables_and_pool_match_the_kv_cache_manager(tiny_llama_dir):
    llm = make_llm(tiny_llama_dir, max_num_batched_tokens=16)
    engine = llm.llm_engine
    scheduler = engine.engine_core.scheduler
    kv = scheduler.kv_cache_manager

    def check(step: StepTrace) -> None:
        live = [*scheduler.running, *scheduler.waiting]
        assert [r.request_id for r in step.requests] == [r.request_id for r in live]
        for rt in step.requests:
            assert rt.block_ids == kv.get_block_ids(rt.request_id)
            assert rt.num_computed_tokens == scheduler.requests[rt.request_id].num_computed_tokens
        assert step.scheduled == engine.engine_core.last_scheduler_output.num_scheduled_tokens
        # Every block's ref count equals the number of block tables that point at it.
        pool = kv.block_pool.blocks
        assert len(step.blocks) == len(pool)
        table_refs: dict[int, int] = {}
        for rt in step.requests:
            for block_id in rt.block_ids:
                table_refs[block_id] = table_refs.get(block_id, 0) + 1
        for block_id, (state, ref_cnt, _) in enumerate(step.blocks):
            assert ref_cnt == pool[block_id].ref_cnt == table_refs.get(block_id, 0)
            assert (state == "owned") == (ref_cnt > 0)
        assert step.num_running == len(scheduler.running)
        assert step.num_waiting == len(scheduler.waiting)

    prompts = [words(0, 30), words(40, 9), words(80, 5), words(120, 14), words(160, 3)]
    trace, texts, sampled = run(llm, prompts, [6, 9, 3, 5, 7], check=check)
    kinds = {r.kind for s in trace.steps for r in s.requests}
    assert {"prefill", "decode"} <= kinds
    # A 30-token prompt under a 16-token budget is prefilled in chunks over several steps.
    r0_prefill_steps = [
        s for s in trace.steps for r in s.requests if r.request_id == "r0" and r.kind == "prefill"
    ]
    assert len(r0_prefill_steps) >= 2
    finished = {rid: s.finished_texts[rid] for s in trace.steps for rid in s.finished_ids}
    assert finished == texts  # final texts equal the engine's RequestOutputs
    assert trace.num_blocks == 64 and trace.block_size == 4
    # The visualizer's per-step rows: a partial prefill chunk is exactly a prefill that sampled
    # nothing; prefills and decodes that sampled appear in the engine's outputs.
    from app.step_views import scheduled_rows

    num_chunks = 0
    for index in range(len(trace.steps)):
        for row in scheduled_rows(trace, index):
            assert (row.kind == "prefill chunk") == (row.request not in sampled[index])
            num_chunks += row.kind == "prefill chunk"
    assert num_chunks >= 1


def test_shared_prefix_blocks_show_ref_count_above_one(tiny_llama_dir):
    llm = make_llm(tiny_llama_dir, enable_prefix_caching=True)
    system = words(200, 16)  # four full blocks of 4 tokens
    prompts = [f"{system} {words(i * 10, 5)}" for i in range(3)]
    trace, _, _ = run(llm, prompts, [8, 8, 8], arrival_interval=2)
    shared = []
    for step in trace.steps:
        tables = {r.request_id: r.block_ids for r in step.requests}
        for block_id, (state, ref_cnt, block_hash) in enumerate(step.blocks):
            owners = [rid for rid, ids in tables.items() if block_id in ids]
            if ref_cnt > 1:
                assert state == "owned" and block_hash and len(owners) == ref_cnt
                shared.append((step.step, block_id, ref_cnt))
    assert shared, "no block was ever shared"
    assert max(ref for _, _, ref in shared) == 3  # all three requests point at the system prompt
    last = trace.steps[-1]
    assert last.prefix_cache_hits >= 2 * 16  # r1 and r2 found the whole system prompt
    # After everything finished, the prompt blocks stay in the pool as cached (hash kept).
    assert any(state == "cached" for state, _, _ in last.blocks)


def test_tight_cache_records_a_preemption_and_the_recompute(tiny_llama_dir):
    prompts = [words(0, 14), words(50, 14), words(100, 14)]
    max_tokens = [24, 24, 24]
    # 16 blocks x 4 = 64 slots; three requests grow to 38 tokens (10 blocks) each. An 8-token
    # budget makes the recompute after a preemption run in chunks.
    engine_args = dict(enable_prefix_caching=False, max_num_batched_tokens=8)
    tight = make_llm(tiny_llama_dir, num_gpu_blocks_override=16, **engine_args)
    trace, texts, _ = run(tight, prompts, max_tokens)
    preempting = [s for s in trace.steps if s.preempted_ids]
    assert preempting, "the tight cache never preempted"
    step = preempting[0]
    victim = step.preempted_ids[0]
    entry = next(r for r in step.requests if r.request_id == victim)
    assert entry.block_ids == [] and entry.num_computed_tokens == 0
    assert step.num_preemptions >= 1 and entry.num_tokens > entry.num_prompt_tokens
    # Back in the batch, it recomputes prompt + earlier outputs in chunks; a chunk that starts
    # past the prompt is still a prefill (many tokens, nothing sampled until the last one).
    recompute = [
        r
        for s in trace.steps[step.step + 1 :]
        for r in s.requests
        if r.request_id == victim and r.scheduled_tokens > 1
    ]
    past_prompt = [
        r for r in recompute if r.num_computed_tokens - r.scheduled_tokens >= r.num_prompt_tokens
    ]
    assert past_prompt and all(r.kind == "prefill" for r in recompute)
    # Preemption by recomputation changes nothing in the output (greedy): same as a roomy cache.
    roomy = make_llm(tiny_llama_dir, num_gpu_blocks_override=128, **engine_args)
    roomy_trace, roomy_texts, _ = run(roomy, prompts, max_tokens)
    assert texts == roomy_texts
    assert not any(s.preempted_ids for s in roomy_trace.steps)


def test_trace_json_round_trip(prefix_trace_path, tmp_path):
    trace = Trace.load(prefix_trace_path)
    assert trace.steps and trace.settings["prompts"]
    again = Trace.from_json(trace.to_json())
    assert again == trace
    assert isinstance(again.steps[0].blocks[0], tuple)
    path = tmp_path / "copy.json"
    again.save(path)
    assert Trace.load(path) == trace


NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1,
         "prompt_lookup_max": 3}  # fmt: skip


def test_speculative_steps_record_drafts_accepted_and_rolled_back(tiny_llama_dir):
    # Repetitive prompts give the n-gram proposer matches (tests/spec_decode uses the same).
    prompts = [
        " ".join([words(10, 5)] * 4),
        " ".join([words(7, 3)] * 9),
        words(3, 37),
        " ".join([words(10, 5)] * 3) + " " + words(99, 2),
    ]
    llm = make_llm(tiny_llama_dir, speculative_config=NGRAM, max_num_batched_tokens=64)
    engine = llm.llm_engine
    scheduler = engine.engine_core.scheduler
    stats = scheduler.spec_decoding_stats
    seen = {"accepted": 0}

    def check(step: StepTrace) -> None:
        drafts = engine.engine_core.last_scheduler_output.scheduled_spec_decode_tokens
        assert step.spec_decode_tokens == {rid: len(d) for rid, d in drafts.items()}
        for rt in step.requests:
            assert rt.spec_tokens == len(drafts.get(rt.request_id, []))
            assert rt.num_computed_tokens == scheduler.requests[rt.request_id].num_computed_tokens
            if not rt.spec_tokens:
                assert rt.accepted_tokens == rt.rejected_tokens == 0
                continue
            # A verifying step is a decode of 1 + k tokens, rolled back to "all but the last".
            assert rt.kind == "decode" and rt.scheduled_tokens == 1 + rt.spec_tokens
            assert rt.accepted_tokens + rt.rejected_tokens == rt.spec_tokens
            assert rt.num_computed_tokens == rt.num_tokens - 1
            # The rejected drafts' slots lie in blocks the request still owns.
            assert rt.num_computed_tokens + rt.rejected_tokens <= len(rt.block_ids) * 4
        if not set(drafts) & set(step.finished_ids):
            accepted = sum(rt.accepted_tokens for rt in step.requests)
            assert stats.num_accepted_tokens - seen["accepted"] == accepted
        seen["accepted"] = stats.num_accepted_tokens

    trace, _, _ = run(llm, prompts, [40, 33, 25, 18], check=check)
    live = [r for s in trace.steps for r in s.requests if r.spec_tokens]
    assert live and any(r.accepted_tokens for r in live) and any(r.rejected_tokens for r in live)
    assert sum(n for s in trace.steps for n in s.spec_decode_tokens.values()) == (
        stats.num_draft_tokens
    )
    assert trace.speculative_config is not None
    assert trace.speculative_config["num_speculative_tokens"] == 3
    assert Trace.from_json(trace.to_json()) == trace


def test_traces_recorded_before_speculative_decoding_still_load(prefix_trace_path):
    """JSON without the stage-11 fields (spec counts, speculative_config) loads with defaults."""
    trace = Trace.load(prefix_trace_path)
    data = json.loads(trace.to_json())
    data.pop("speculative_config")
    for step in data["steps"]:
        step.pop("spec_decode_tokens")
        for request in step["requests"]:
            for key in ("spec_tokens", "accepted_tokens", "rejected_tokens"):
                request.pop(key)
    old = Trace.from_json(json.dumps(data))
    assert old == trace and old.speculative_config is None
    assert all(r.spec_tokens == r.rejected_tokens == 0 for s in old.steps for r in s.requests)
