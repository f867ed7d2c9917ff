"""Lesson 06 demo: what one decode step costs eagerly and compiled, read from a profiler trace.

    .venv/bin/python lessons/06_cuda_graphs/demo.py            # SmolLM2: eager, then compiled
    .venv/bin/python lessons/06_cuda_graphs/demo.py --eager    # eager only (no compile wait)

For each mode it builds an engine, runs a few decode steps of one request, profiles one step with
torch.profiler (counting the `aten::` calls and writing a Chrome trace you can open in
chrome://tracing or https://ui.perfetto.dev), and prints the median step time. The first compile
of SmolLM2 on a 2-core CPU takes minutes; the second start reuses the on-disk cache. To read the
code inductor generated: TORCH_LOGS=output_code (printed) or TORCH_COMPILE_DEBUG=1 (a
torch_compile_debug/ folder with the FX graphs and the generated C++ per graph).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vllm_mini import LLM, SamplingParams


def profile_mode(model: str | None, mode: int, trace: str) -> tuple[int, float]:
    llm = LLM(model, compilation_config={"mode": mode}, max_model_len=256)
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    engine.add_request("0", {"prompt_token_ids": list(range(5, 21))}, params)
    engine.step()  # prefill (and, compiled, the one compilation)
    times = []
    for _ in range(6):
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        engine.step()
    prof.export_chrome_trace(trace)
    aten = sum(e.name.startswith("aten::") for e in prof.events())
    while engine.has_unfinished_requests():
        engine.step()
    return aten, 1000 * statistics.median(times)


def main(model: str | None = None, compile_too: bool = True) -> None:
    modes = [(0, "eager")] + ([(3, "compiled")] if compile_too else [])
    for mode, name in modes:
        aten, ms = profile_mode(model, mode, f"/tmp/lesson06_{name}.json")
        print(f"{name:9s}: {ms:7.2f} ms per decode step, {aten} ATen calls per decode step "
              f"(trace: /tmp/lesson06_{name}.json)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--eager", action="store_true")
    args = parser.parse_args()
    main(args.model, compile_too=not args.eager)
