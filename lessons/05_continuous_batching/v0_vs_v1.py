"""Lesson 05, the reading guide's FAQ "V0 vs V1", measured with our own scheduler.

vLLM V0 ran a step as EITHER prefills OR decodes: when a prompt was waiting and fit, the next
step ran prompts only (whole prompts, never cut) while every running request's decode waited;
otherwise the step decoded. V1 has one rule instead: each request owes num_tokens -
num_computed_tokens, and one token budget per step pays those debts, running requests first,
so decodes and (chunks of) prompts share every step. `V0StyleScheduler` below emulates V0's
policy on top of the engine's V1 Scheduler; the same workload then runs under both, on the same
engine and kernels, and the script prints what each policy cost:

- steps, by kind: prefill only, decode only, or mixed;
- TTFT (time to first token) and TPOT (time per output token after the first), mean;
- the longest gap between two tokens of one request, in steps and in ms (a stalled decode);
- output tokens per second over the whole run.

    .venv/bin/python lessons/05_continuous_batching/v0_vs_v1.py          (SmolLM2, about 40 s)
    .venv/bin/python lessons/05_continuous_batching/v0_vs_v1.py --tiny   (random model, seconds)
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import make_tiny_checkpoint  # noqa: E402
from vllm_mini import LLM, SamplingParams  # noqa: E402
from vllm_mini.core.sched.output import SchedulerOutput  # noqa: E402
from vllm_mini.core.sched.scheduler import Scheduler  # noqa: E402

# The same settings for both policies: only the scheduling rule differs.
SETTINGS = dict(
    max_num_seqs=4,  # fewer seats than requests: new prompts keep arriving as others finish
    max_num_batched_tokens=256,  # >= the longest prompt, so V0 can run every prompt whole
    enable_prefix_caching=False,  # random prompts share nothing; keep the comparison plain
)


class V0StyleScheduler(Scheduler):
    """V0's policy on V1's machinery: a prefill-only step whenever a waiting prompt fits (the
    running requests sit it out), else a decode-only step (nothing is admitted)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.enable_chunked_prefill = False  # V0 ran each prompt whole

    def schedule(self) -> SchedulerOutput:
        finished = set()
        if self.waiting:
            out = self._prefill_only()
            if out.total_num_scheduled_tokens:
                return out
            finished = out.finished_req_ids  # nothing fit: fall through to a decode step
        out = self._decode_only()
        out.finished_req_ids |= finished
        return out

    def _prefill_only(self) -> SchedulerOutput:
        # Hide the running requests: the running loop then schedules nothing, and admission
        # fills the seats they leave free.
        running, seats = self.running, self.max_num_running_reqs
        self.running, self.max_num_running_reqs = [], seats - len(running)
        try:
            return super().schedule()
        finally:
            self.running, self.max_num_running_reqs = running + self.running, seats

    def _decode_only(self) -> SchedulerOutput:
        seats = self.max_num_running_reqs
        self.max_num_running_reqs = 0  # admission's seat check fails: decodes only
        try:
            return super().schedule()
        finally:
            self.max_num_running_reqs = seats


@dataclass
class Timeline:
    """What one policy did: step kinds and durations, and when each request got each token."""

    step_kinds: list[str] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    # request id -> [(step index, seconds since the start)] of each of its tokens
    tokens: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    outputs: dict[str, list[int]] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        ttft = [t[0][1] for t in self.tokens.values()]
        tpot = [(t[-1][1] - t[0][1]) / (len(t) - 1) for t in self.tokens.values() if len(t) > 1]
        gaps = [(b[0] - a[0], b[1] - a[1]) for t in self.tokens.values() for a, b in zip(t, t[1:])]
        total_s = sum(self.step_ms) / 1000
        return {
            "steps": len(self.step_kinds),
            **{k: self.step_kinds.count(k) for k in ("prefill", "decode", "mixed")},
            "ttft_ms": 1000 * sum(ttft) / len(ttft),
            "tpot_ms": 1000 * sum(tpot) / len(tpot),
            "max_gap_steps": max(g[0] for g in gaps),
            "max_gap_ms": 1000 * max(g[1] for g in gaps),
            "tok_s": sum(len(t) for t in self.tokens.values()) / total_s,
        }


def make_workload(num: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """Seeded (prompt, output length) pairs: prompts of 32-256 tokens, outputs of 16-48."""
    rng = random.Random(seed)
    return [
        ([rng.randint(3, vocab - 1) for _ in range(rng.randint(32, 256))], rng.randint(16, 48))
        for _ in range(num)
    ]


def run(llm: LLM, workload: list[tuple[list[int], int]], v0: bool, budget: int = 0) -> Timeline:
    """Submit the whole workload at once and step the engine to the end, recording the steps.
    budget: the step's token budget if not the engine's max_num_batched_tokens."""
    engine = llm.llm_engine
    core = engine.engine_core
    cls = V0StyleScheduler if v0 else Scheduler
    core.scheduler = cls(core.vllm_config, core.num_blocks)  # a fresh scheduler, same worker
    if budget:
        core.scheduler.max_num_scheduled_tokens = budget  # read afresh by every schedule()
    for i, (prompt, n) in enumerate(workload):
        params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        engine.add_request(f"r{i}", {"prompt_token_ids": prompt}, params)
    line = Timeline()
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        # A request is decoding when only the token it sampled last lacks KV.
        decoding = {
            r.request_id
            for r in core.scheduler.running
            if r.num_output_tokens and r.num_computed_tokens == r.num_tokens - 1
        }
        t0 = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        scheduled = core.last_scheduler_output.num_scheduled_tokens
        kinds = {"decode" if rid in decoding else "prefill" for rid in scheduled}
        line.step_kinds.append(kinds.pop() if len(kinds) == 1 else "mixed")
        line.step_ms.append(1000 * (now - t0))
        step = len(line.step_kinds) - 1
        for out in outputs:
            seen = line.tokens.setdefault(out.request_id, [])
            new = len(out.outputs[0].token_ids) - len(seen)
            seen.extend([(step, now - start)] * new)
            if out.finished:
                line.outputs[out.request_id] = list(out.outputs[0].token_ids)
    return line


def compare(llm: LLM, num_requests: int = 16, small_budget: int = 64) -> dict[str, Timeline]:
    """Run the workload under V0's policy and V1's (with the same budget, and with a budget
    smaller than a prompt, which only V1 allows); print the table; return the timelines."""
    vocab = llm.llm_engine.vllm_config.model_config.hf_config.vocab_size
    workload = make_workload(num_requests, vocab)
    prompt_tokens = sum(len(p) for p, _ in workload)
    print(
        f"{num_requests} requests submitted at once: {prompt_tokens} prompt tokens, "
        f"{sum(n for _, n in workload)} output tokens; {SETTINGS['max_num_seqs']} seats, "
        f"a {SETTINGS['max_num_batched_tokens']}-token budget per step"
    )
    run(llm, workload[:2], v0=False)  # warm-up: first-call costs stay out of both runs
    budget = SETTINGS["max_num_batched_tokens"]
    lines = {
        f"V0: prefill-first, budget {budget}": run(llm, workload, v0=True),
        f"V1: one budget of {budget}": run(llm, workload, v0=False),
        f"V1: one budget of {small_budget}": run(llm, workload, v0=False, budget=small_budget),
    }
    header = "policy                         steps (prefill/decode/mixed)"
    print(f"\n{header}  TTFT ms  TPOT ms   longest gap  tok/s")
    for name, line in lines.items():
        s = line.summary()
        kinds = f"{s['steps']:4d} ({s['prefill']}/{s['decode']}/{s['mixed']})"
        gap = f"{s['max_gap_steps']} st {s['max_gap_ms']:5.0f} ms"
        print(
            f"{name:30s} {kinds:29s} {s['ttft_ms']:8.0f} {s['tpot_ms']:8.1f} "
            f"{gap:>14s} {s['tok_s']:6.1f}"
        )
    v0, *v1 = lines.values()
    same = all(line.outputs == v0.outputs for line in v1)
    print("same greedy tokens under every policy:", same)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (no SmolLM2)")
    parser.add_argument("--requests", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        model = str(make_tiny_checkpoint(Path(d), "llama")) if args.tiny else None
        llm = LLM(model, disable_log_stats=True, **SETTINGS)
        compare(llm, args.requests)


if __name__ == "__main__":
    main()
