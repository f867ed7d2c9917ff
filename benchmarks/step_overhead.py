"""Per-step CPU overhead of the model runner: everything in a step that is not the model.

A decode step's useful work is the forward pass, the lm_head and the sampler's math. Around them
the runner updates its persistent batch, builds input_ids / positions / slot_mapping / the block
table, builds the sampling metadata and packs the output. That overhead is paid every step, for
every request, and on a GPU it is what leaves the device idle between kernels (vLLM's reason for
the persistent `InputBatch`, vllm/v1/worker/gpu_input_batch.py).

We time `ModelRunner.execute_model` and subtract the time spent inside `model.forward`,
`model.compute_logits` and `sampler.forward` (wrapped timers). By default the forward pass is
replaced by a stub returning zeros (its cost is subtracted anyway; the stub keeps the run short
and the figures steady). `--baseline REV` loads `vllm_mini/worker/model_runner.py` as it was at
git revision REV and measures it in the same process, taking turns with the current runner.

    python benchmarks/step_overhead.py [--model PATH] [--baseline REV] [--real-forward]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_workload  # noqa: E402

from vllm_mini import LLM, SamplingParams  # noqa: E402
from vllm_mini.worker.model_runner import ModelRunner  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLING = {
    "greedy": SamplingParams(temperature=0.0, max_tokens=4096, ignore_eos=True),
    # Every sampling feature on: top-p/top-k/min-p sort, penalties need the prompt tensor.
    "mixed": SamplingParams(
        temperature=0.8,
        top_p=0.95,
        top_k=50,
        repetition_penalty=1.1,
        frequency_penalty=0.1,
        max_tokens=4096,
        ignore_eos=True,
    ),
}


def load_baseline_runner(rev: str) -> type:
    """The ModelRunner class of `rev`, imported from a temp file (git show), for comparison."""
    source = subprocess.run(
        ["git", "show", f"{rev}:vllm_mini/worker/model_runner.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_model_runner.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_model_runner", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module.ModelRunner


class Timer:
    """Accumulates the wall time of calls to one wrapped function."""

    def __init__(self) -> None:
        self.total = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - start

        return timed


def install_runner(llm: LLM, runner_cls: type, real_forward: bool) -> tuple[Any, dict]:
    """A fresh runner of `runner_cls` sharing the loaded model and KV cache, with timers on."""
    worker = llm.llm_engine.engine_core.worker
    loaded = worker.model_runner
    runner = runner_cls(llm.llm_engine.vllm_config)
    runner.model, runner.attn_layers = loaded.model, loaded.attn_layers
    worker.model_runner = runner
    model = runner.model
    for name in ("forward", "compute_logits"):  # drop wrappers from an earlier round
        model.__dict__.pop(name, None)
    hidden = llm.llm_engine.vllm_config.model_config.hf_config.hidden_size

    def stub_forward(input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return torch.zeros(input_ids.shape[0], hidden)

    timers = {"forward": Timer(), "logits": Timer(), "sampler": Timer(), "prepare": Timer()}
    model.forward = timers["forward"].wrap(model.forward if real_forward else stub_forward)
    model.compute_logits = timers["logits"].wrap(type(model).compute_logits.__get__(model))
    runner.sampler.forward = timers["sampler"].wrap(runner.sampler.forward)
    runner._prepare_inputs = timers["prepare"].wrap(runner._prepare_inputs)
    return runner, timers


def measure(
    llm: LLM, runner_cls: type, batch: int, params: SamplingParams, steps: int, real: bool
) -> tuple[float, float]:
    """Median per-step (overhead, prepare_inputs) in microseconds over `steps` decode steps."""
    core = llm.llm_engine.engine_core
    runner, timers = install_runner(llm, runner_cls, real)
    prompts, _ = random_workload(batch, 128, 512, 1, 1, seed=batch)
    ids = [f"b{batch}-{time.monotonic_ns()}-{i}" for i in range(batch)]
    for req_id, prompt in zip(ids, prompts):
        llm.llm_engine.add_request(req_id, {"prompt_token_ids": prompt}, params)
    while True:  # prefill until every request decodes (one token each per step)
        core.step()
        so = core.last_scheduler_output
        if so.total_num_scheduled_tokens == batch and not so.scheduled_new_reqs:
            break
    overheads, prepares = [], []
    for _ in range(steps):
        before = {k: t.total for k, t in timers.items()}
        so = core.scheduler.schedule()
        t0 = time.perf_counter()
        out = core.worker.execute_model(so)
        elapsed = time.perf_counter() - t0
        core.scheduler.update_from_output(so, out)
        spent = {k: t.total - before[k] for k, t in timers.items()}
        model_time = spent["forward"] + spent["logits"] + spent["sampler"]
        overheads.append((elapsed - model_time) * 1e6)
        prepares.append(spent["prepare"] * 1e6)
    llm.llm_engine.abort_request(ids)
    core.step()  # let the runner drop the aborted requests
    return statistics.median(overheads), statistics.median(prepares)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None)
    parser.add_argument("--baseline", default=None, help="git revision of the runner to compare")
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sampling", default="greedy,mixed")
    parser.add_argument("--real-forward", action="store_true")
    # One thread: the overhead is single-threaded Python, and on a shared machine a second torch
    # thread waiting for a busy core adds stalls that have nothing to do with the runner.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    llm = LLM(args.model, max_num_seqs=64, max_num_batched_tokens=2048)
    variants = {"current": ModelRunner}
    if args.baseline:
        variants = {f"baseline {args.baseline}": load_baseline_runner(args.baseline), **variants}
    batches = [int(b) for b in args.batches.split(",")]
    print(f"model {llm.llm_engine.vllm_config.model_config.model}, torch threads ", end="")
    print(f"{torch.get_num_threads()}, forward {'real' if args.real_forward else 'stubbed'}")
    print("median µs per decode step outside forward/lm_head/sampler (prepare_inputs in brackets)")
    for mode in args.sampling.split(","):
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):  # variants take turns, so drift hits both alike
            for batch in batches:
                for name, cls in variants.items():
                    got = measure(llm, cls, batch, SAMPLING[mode], args.steps, args.real_forward)
                    results.setdefault((name, batch), []).append(got)
        print(f"\nsampling: {mode}")
        header = "| batch | " + " | ".join(variants) + (" | speed-up |" if args.baseline else " |")
        print(header)
        print("|---" * (header.count("|") - 1) + "|")
        for batch in batches:
            cells, totals = [], []
            for name in variants:
                runs = results[(name, batch)]
                total = statistics.median(r[0] for r in runs)
                prep = statistics.median(r[1] for r in runs)
                cells.append(f"{total:.0f} ({prep:.0f})")
                totals.append(total)
            ratio = f" | {totals[0] / totals[-1]:.1f}×" if args.baseline else ""
            print(f"| {batch} | " + " | ".join(cells) + ratio + " |")


if __name__ == "__main__":
    main()
