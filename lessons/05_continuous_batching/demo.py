"""Lesson 05 demo: the real scheduler step by step, the messages of one step, continuous against
static batching measured on SmolLM2, and a profile of one prefill and one decode step.

Sections 1-2 run a tiny random Llama (built like tests/conftest.py does); sections 3-4 load
SmolLM2-135M (the bundled GGUF). Nothing is downloaded.

    .venv/bin/python lessons/05_continuous_batching/demo.py              (about 50 s)
    .venv/bin/python lessons/05_continuous_batching/demo.py --sections 1 2     (about 8 s)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import profile_step  # noqa: E402

from benchmarks.common import random_workload  # noqa: E402
from tests.conftest import make_tiny_checkpoint  # noqa: E402
from vllm_mini import LLM, SamplingParams  # noqa: E402
from vllm_mini.engine.llm_engine import LLMEngine  # noqa: E402
from vllm_mini.request import Request, RequestStatus  # noqa: E402

# Section 1's workload: (request id, prompt tokens, max_tokens).
WORKLOAD = (("A", 30, 5), ("B", 6, 10), ("C", 10, 8), ("D", 5, 4))
SETTINGS = dict(
    block_size=4,
    num_gpu_blocks_override=10,  # 40 token slots: not enough for everyone, so someone is preempted
    max_num_batched_tokens=16,  # the token budget of one step
    max_num_seqs=3,
    enable_prefix_caching=False,  # so a recompute really recomputes
)


def section(title: str) -> None:
    print(f"\n=== {title}")


def _cell(req: Request, n: int, preempted: bool, sampled: bool, was_decoding: bool) -> str:
    if preempted:
        return "PREEMPTED"
    if n == 0:
        if req.is_finished():
            return ""
        return "(no budget)" if req.status == RequestStatus.RUNNING else "waiting"
    if n == 1 and was_decoding:
        return "decode"
    kind = "recompute" if req.num_preemptions else "prefill"
    return f"{kind} {n}" + (" +tok" if sampled else "")


def worked_schedule(model_dir: Path) -> list[dict[str, Any]]:
    """Section 1: one line per step, printed from the real scheduler's decisions.

    Returns one dict per engine step: the SchedulerOutput ("so"), the runner's inputs ("req_ids",
    "input_ids", "positions", "meta"), its ModelRunnerOutput ("out"), the printed "cells", the
    KV blocks in use after the step ("used_blocks"), and each request's (output tokens, computed
    tokens, tokens) before the step ("before").
    """
    budget = SETTINGS["max_num_batched_tokens"]
    section(
        f"1. A worked schedule: {len(WORKLOAD)} requests, a {budget}-token budget, "
        f"{SETTINGS['num_gpu_blocks_override']} KV blocks of {SETTINGS['block_size']} tokens, "
        f"at most {SETTINGS['max_num_seqs']} running"
    )
    engine = LLM(str(model_dir), **SETTINGS).llm_engine
    core = engine.engine_core
    steps = _spy_on_the_step(engine)
    reqs: dict[str, Request] = {}
    for i, (rid, n, max_tokens) in enumerate(WORKLOAD):
        prompt = {"prompt_token_ids": list(range(10 + 50 * i, 10 + 50 * i + n))}
        engine.add_request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        reqs[rid] = core.scheduler.requests[rid]  # keep a handle: finished ones leave the dict
        print(f"   {rid}: prompt {n:2d} tokens, max_tokens {max_tokens}")
    ids = list(reqs)
    print(f"\n   step | {' | '.join(f'{r:^16s}' for r in ids)} | tokens | KV blocks")
    step = 0
    while engine.has_unfinished_requests():
        before = {
            r: (q.num_output_tokens, q.num_computed_tokens, q.num_tokens) for r, q in reqs.items()
        }
        engine.step()
        so = core.last_scheduler_output
        cells = []
        for rid, req in reqs.items():
            n_out, computed, total = before[rid]
            # Decoding = it has outputs and only its newest token lacks KV (not mid-recompute).
            was_decoding = n_out > 0 and computed == total - 1
            cells.append(
                _cell(
                    req,
                    so.num_scheduled_tokens.get(rid, 0),
                    rid in so.preempted_req_ids,
                    req.num_output_tokens > n_out,
                    was_decoding,
                )
            )
        kv = core.scheduler.kv_cache_manager
        used = kv.num_blocks - kv.num_free_blocks  # after the step: finished requests freed theirs
        steps[-1].update(cells=dict(zip(ids, cells)), used_blocks=used, before=before)
        print(
            f"   {step:4d} | {' | '.join(f'{c:^16s}' for c in cells)} | "
            f"{so.total_num_scheduled_tokens:3d}/{budget} | {used:2d}/{kv.num_blocks}"
        )
        step += 1
    print("   (+tok: this chunk reached the end of the known tokens, so the step sampled one)")
    return steps


def _spy_on_the_step(engine: LLMEngine) -> list[dict[str, Any]]:
    """Record each step's SchedulerOutput, runner inputs and ModelRunnerOutput (demo only).

    An instance attribute shadows the method of the same name, so only this engine is spied on.
    """
    worker = engine.engine_core.worker
    runner = worker.model_runner
    steps: list[dict[str, Any]] = []
    execute, prepare = worker.execute_model, runner._prepare_inputs

    def spy_execute(so, grammar_output=None):
        steps.append({"so": so})
        steps[-1]["out"] = execute(so, grammar_output)
        return steps[-1]["out"]

    def spy_prepare(so, req_ids):
        ids, positions, meta = prepare(so, req_ids)
        steps[-1].update(req_ids=req_ids, input_ids=ids, positions=positions, meta=meta)
        return ids, positions, meta

    worker.execute_model = spy_execute
    runner._prepare_inputs = spy_prepare
    return steps


def one_step_messages(steps: list[dict[str, Any]]) -> None:
    """Section 2: what crosses the scheduler -> runner -> scheduler boundary in two steps."""
    resumed = next(
        i
        for i, s in enumerate(steps)
        if any(new.output_token_ids for new in s["so"].scheduled_new_reqs)
    )
    for i in (resumed, resumed + 1):
        s = steps[i]
        so, out, meta = s["so"], s["out"], s["meta"]
        section(f"2. The messages of step {i}")
        print("   SchedulerOutput")
        for new in so.scheduled_new_reqs:
            print(
                f"     new     {new.req_id}: prompt {len(new.prompt_token_ids)} tokens, "
                f"output so far {new.output_token_ids}, block_ids {new.block_ids}, "
                f"num_computed_tokens {new.num_computed_tokens}"
            )
        cached = so.scheduled_cached_reqs
        for rid, blocks, computed in zip(
            cached.req_ids, cached.new_block_ids, cached.num_computed_tokens
        ):
            print(f"     cached  {rid}: new_block_ids {blocks}, num_computed_tokens {computed}")
        print(
            f"     num_scheduled_tokens {so.num_scheduled_tokens}, finished_req_ids "
            f"{sorted(so.finished_req_ids)}, preempted_req_ids {sorted(so.preempted_req_ids)}"
        )
        print("   the runner's batch (flattened over requests)")
        print(f"     req_ids         {s['req_ids']}")
        print(f"     positions       {s['positions'].tolist()}")
        print(f"     query_start_loc {meta.query_start_loc.tolist()}")
        print(f"     seq_lens        {meta.seq_lens.tolist()}")
        print(f"     slot_mapping    {meta.slot_mapping.tolist()}")
        print(
            f"   ModelRunnerOutput.sampled_token_ids {dict(zip(out.req_ids, out.sampled_token_ids))}"
        )


def _run(engine: LLMEngine, batch: list[int], prompts, out_lens, pad: bool) -> tuple[int, int, int]:
    """Run `batch` (request indices) to completion; return (steps, rows computed, useful rows)."""
    longest = max(out_lens[i] for i in batch)
    for i in batch:
        n = longest if pad else out_lens[i]  # static batching: everyone runs to the longest
        engine.add_request(
            f"r{i}", {"prompt_token_ids": prompts[i]}, SamplingParams(max_tokens=n, ignore_eos=True)
        )
    scheduler = engine.engine_core.scheduler
    handles = {f"r{i}": (scheduler.requests[f"r{i}"], out_lens[i]) for i in batch}
    steps = rows = useful = 0
    while engine.has_unfinished_requests():
        engine.step()
        scheduled = engine.engine_core.last_scheduler_output.num_scheduled_tokens
        steps += 1
        rows += len(scheduled)
        # Useful: the request still wanted what this row computed (a chunk, or a token <= its own
        # output length); the rest is padding.
        useful += sum(
            1 for rid in scheduled if handles[rid][0].num_output_tokens <= handles[rid][1]
        )
    return steps, rows, useful


def static_vs_continuous(llm: LLM, num: int = 16, seats: int = 4) -> dict[str, float]:
    """Section 3: the same engine and kernels; only the batching policy changes. Returns tok/s."""
    section(f"3. Continuous vs static batching, SmolLM2, {num} requests (measured now)")
    # The throughput benchmark's seeded recipe, scaled down: prompts 16-48, outputs 8-48 tokens.
    prompts, out_lens = random_workload(num, 16, 48, 8, 48, seed=0)
    engine = llm.llm_engine
    scheduler = engine.engine_core.scheduler
    print(
        f"   prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens, outputs "
        f"{min(out_lens)}-{max(out_lens)} tokens ({sum(out_lens)} in all)"
    )
    _run(engine, [0], prompts, [4] * num, pad=False)  # warm-up: first-call costs stay out
    print(
        f"   {'policy':42s} {'steps':>6s} {'rows':>6s} {'padding':>8s} {'time':>8s} {'tok/s':>7s}"
    )
    default_seats = scheduler.max_num_running_reqs
    tok_s = {}
    for title, pad, max_seqs in (
        (f"static batches of {seats} (HF generate's way)", True, seats),
        (f"continuous, max_num_seqs {seats}", False, seats),
        (f"continuous, max_num_seqs {num}", False, num),
    ):
        # The scheduler reads its seat limit (max_num_seqs) from here at every step.
        scheduler.max_num_running_reqs = max_seqs
        groups = [list(range(b, min(b + seats, num))) for b in range(0, num, seats)]
        start = time.perf_counter()
        totals = [0, 0, 0]
        for group in groups if pad else [list(range(num))]:
            for k, v in enumerate(_run(engine, group, prompts, out_lens, pad)):
                totals[k] += v
        elapsed = time.perf_counter() - start
        steps, rows, useful = totals
        tok_s[title] = sum(out_lens) / elapsed  # useful tokens only: padding earns nothing
        print(
            f"   {title:42s} {steps:6d} {rows:6d} {rows - useful:8d} {elapsed:7.1f}s "
            f"{tok_s[title]:7.1f}"
        )
    scheduler.max_num_running_reqs = default_seats
    static, *continuous = tok_s.values()
    print(
        "   rows = (request, step) pairs the model computed; padding = rows for requests that were"
        "\n   already done but had to wait for the longest of their batch. Continuous batching: "
        + ", ".join(f"{c / static:.1f}x" for c in continuous)
        + " the static throughput"
    )
    return tok_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", type=int, nargs="*", default=[1, 2, 3, 4])
    parser.add_argument("--trace", type=Path, default=None, help="section 4's Chrome trace file")
    args = parser.parse_args()
    if {1, 2} & set(args.sections):
        with tempfile.TemporaryDirectory() as d:
            steps = worked_schedule(make_tiny_checkpoint(Path(d), "llama"))
            if 2 in args.sections:
                one_step_messages(steps)
    if {3, 4} & set(args.sections):
        llm = LLM()
        if 3 in args.sections:
            static_vs_continuous(llm)
        if 4 in args.sections:
            section("4. Profile: one prefill step and one decode step of SmolLM2 (torch.profiler)")
            profile_step.run(llm, trace=args.trace)


if __name__ == "__main__":
    main()
