"""Lesson 05: read a torch.profiler trace of one prefill step and one decode step of the engine.

Stage 5 tool (the reading guide's "use a profiler"). vLLM can wrap its workers in torch.profiler
(`--profiler-config`; older releases read `VLLM_TORCH_PROFILER_DIR`; `LLM.start_profile()` /
`stop_profile()`), and recent versions label
parts of a step with `record_function_or_nullcontext` ("schedule: allocate_slots" in
vllm/v1/core/sched/scheduler.py, "gpu_model_runner: forward" in vllm/v1/worker/gpu_model_runner.py).
vllm_mini has no such hooks, so this file labels the phases of `LLMEngine.step()` from the
outside, on instances only: an instance attribute shadows the method of the same name for the
duration of a `with` (the class, and every other engine, stay untouched). Then it sorts the trace
into the table that the lesson README reads.

    .venv/bin/python lessons/05_continuous_batching/profile_step.py [--trace out.json]

(SmolLM2 on CPU, about 20 s; `--trace` also writes the decode step's Chrome trace, which
https://ui.perfetto.dev or chrome://tracing opens.) Next: the README's profiling section.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.latency import copy_bandwidth_gbs  # noqa: E402
from vllm_mini import LLM, SamplingParams  # noqa: E402
from vllm_mini.engine.llm_engine import LLMEngine  # noqa: E402

# The phases of one engine step, in the order they run; none is nested in another, so together
# with "other" they add up to the step. "attention" is labelled inside "forward".
PHASES = (
    "schedule",
    "prepare_inputs",
    "forward",
    "lm_head",
    "sampler",
    "update_from_output",
    "output_processor",
)


def _labelled(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(label):
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def labelled_phases(engine: LLMEngine) -> Iterator[None]:
    """Shadow the step's methods with labelled versions on these instances; restore them after."""
    core = engine.engine_core
    runner = core.worker.model_runner
    targets: list[tuple[object, str, str]] = [
        (core.scheduler, "schedule", "schedule"),
        (core.scheduler, "update_from_output", "update_from_output"),
        (runner, "_prepare_inputs", "prepare_inputs"),
        (runner.model, "forward", "forward"),  # nn.Module.__call__ looks self.forward up
        (runner.model, "compute_logits", "lm_head"),
        (runner.sampler, "forward", "sampler"),
        (engine.output_processor, "process_outputs", "output_processor"),
    ]
    targets += [(layer, "forward", "attention") for layer in runner.attn_layers]
    for obj, name, label in targets:
        setattr(obj, name, _labelled(label, getattr(obj, name)))
    try:
        yield
    finally:
        for obj, name, _ in targets:
            delattr(obj, name)  # the class's method shows through again


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Kineto (the profiler's C++ side) prints two lines to fd 2 per profile; keep them out."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_one_step(engine: LLMEngine) -> profile:
    """Run engine.step() under the profiler with every phase labelled, the whole as "step"."""
    with labelled_phases(engine), _quiet_native_stderr():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            with record_function("step"):
                engine.step()
    return prof


def _inside(event: Any, label: str | set[str]) -> bool:
    labels = {label} if isinstance(label, str) else label
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in labels:
            return True
        parent = parent.cpu_parent
    return False


# The ops a linear layer runs, by path: F.linear (the reference), the prepacked float weights on
# CPU (layers/utils.py: our dense kernel by default; oneDNN's matmul with VLLM_MINI_CPU_GEMM=onednn,
# `mkldnn::_linear_pointwise` in eager mode, inside our `vllm_mini::onednn_linear` wrapper under
# torch.compile), and the stage-7 kernels for GGUF and 4-bit weights.
LINEAR_OPS = {
    "aten::linear",
    "vllm_mini_C::dense_gemm",
    "vllm_mini::onednn_linear",
    "mkldnn::_linear_pointwise",
    "vllm_mini_C::gguf_gemm",
    "vllm_mini_C::w4a16_gemm",
}


def breakdown(prof: profile) -> dict[str, float]:
    """Milliseconds per phase (inclusive), with the forward pass split four ways.

    forward = linear (every LINEAR_OPS op in it) + attention (the Attention layers: cache write and
    kernel) + forward_ops (the other ATen ops: norms, RoPE, SiLU, adds) + forward_python (the
    forward's self time: Python between ops, module calls). 'other' is the rest of the step:
    LLMEngine/EngineCore glue, stats, Python between phases.
    """
    events = prof.events()

    def total(name: str) -> float:
        return sum(e.cpu_time_total for e in events if e.name == name) / 1e3

    ms = {label: total(label) for label in (*PHASES, "attention", "step")}
    # The outermost linear op of each matmul (the wrapper, when there is one), counted once.
    linears = [
        e
        for e in events
        if e.name in LINEAR_OPS and _inside(e, "forward") and not _inside(e, LINEAR_OPS)
    ]
    ms["linear"] = sum(e.cpu_time_total for e in linears) / 1e3
    ms["forward_python"] = sum(e.self_cpu_time_total for e in events if e.name == "forward") / 1e3
    ms["forward_ops"] = ms["forward"] - ms["linear"] - ms["attention"] - ms["forward_python"]
    ms["after"] = ms["update_from_output"] + ms["output_processor"]
    ms["other"] = ms["step"] - sum(ms[p] for p in PHASES)
    return ms


ROWS = (
    ("linear layers (qkv, o, gate_up, down)", "linear"),
    ("attention layers (cache write + kernel)", "attention"),
    ("other ops in forward (norms, RoPE, SiLU, +)", "forward_ops"),
    ("Python in forward (module calls)", "forward_python"),
    ("lm_head (logits over the vocabulary)", "lm_head"),
    ("sampler", "sampler"),
    ("schedule", "schedule"),
    ("prepare_inputs (the step's input tensors)", "prepare_inputs"),
    ("update_from_output + output_processor", "after"),
    ("other engine Python (glue, stats)", "other"),
)


def print_table(columns: dict[str, dict[str, float]]) -> None:
    print(f"   {'where the time goes':44s}" + "".join(f"{c:>19s}" for c in columns))
    for title, key in ROWS:
        cells = [f"{ms[key]:8.2f} ms {100 * ms[key] / ms['step']:5.1f}%" for ms in columns.values()]
        print(f"   {title:44s}" + "".join(f"{c:>19s}" for c in cells))
    whole = [f"{ms['step']:8.2f} ms" for ms in columns.values()]
    print(f"   {'whole step (profiler clock)':44s}" + "".join(f"{c:>19s}" for c in whole))


def num_aten_calls(prof: profile) -> int:
    """ATen ops called from Python (not from inside another op): one dispatch each."""
    return sum(
        1
        for e in prof.events()
        if e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )


def _timed_step(engine: LLMEngine) -> float:
    start = time.perf_counter()
    engine.step()
    return time.perf_counter() - start


def _drain(engine: LLMEngine) -> None:
    while engine.has_unfinished_requests():
        engine.step()


def prefill(engine: LLMEngine, prompts: list[list[int]]) -> tuple[float, profile]:
    """Prefill each prompt alone: (fastest unprofiled step s, profile of the last one's step)."""
    params = SamplingParams(temperature=0.0, max_tokens=1)
    best = float("inf")
    for k, prompt in enumerate(prompts):
        engine.add_request(f"prefill{k}", {"prompt_token_ids": prompt}, params)
        if k < len(prompts) - 1:
            best = min(best, _timed_step(engine))
        else:
            prof = profile_one_step(engine)
        _drain(engine)
    return best, prof


def decode(engine: LLMEngine, batch: int, steps: int = 5) -> tuple[float, profile]:
    """`batch` requests decode together: (fastest of `steps` unprofiled steps s, a profiled step)."""
    params = SamplingParams(temperature=0.0, max_tokens=steps + 3, ignore_eos=True)
    for i in range(batch):
        prompt = [100 + (7 * i + j) % 30000 for j in range(16)]
        engine.add_request(f"batch{batch}-{i}", {"prompt_token_ids": prompt}, params)
    engine.step()  # all the prefills (16 * batch tokens fit the default token budget)
    best = min(_timed_step(engine) for _ in range(steps))
    prof = profile_one_step(engine)
    _drain(engine)
    return best, prof


def run(llm: LLM, prompt_len: int = 512, trace: Path | None = None) -> dict[str, dict[str, float]]:
    engine = llm.llm_engine
    model = engine.engine_core.worker.model_runner.model
    # Tied embeddings are counted once: lm_head reads that matrix every step anyway.
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # The decoder layers' linears do the multiply-adds of every token (the embedding is a lookup;
    # the lm_head runs once per request, not per prompt token).
    layer_params = sum(p.numel() for p in model.model.layers.parameters())
    all_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    # Distinct random prompts, so the prefix cache cannot skip any of the prefill.
    prompts = [torch.randint(100, 40000, (prompt_len,), generator=g).tolist() for _ in range(3)]
    engine.add_request(
        "warm-up", {"prompt_token_ids": prompts[0][:32]}, SamplingParams(max_tokens=4)
    )
    _drain(engine)

    prefill_s, prof_prefill = prefill(engine, prompts[1:])
    step_s, prof_batch = {}, {}
    for batch in (1, 4, 16, 64):
        step_s[batch], prof_batch[batch] = decode(engine, batch)
    columns = {"prefill": prof_prefill, "decode, batch 1": prof_batch[1]}
    columns["decode, batch 64"] = prof_batch[64]
    print(f"   one prefill step ({prompt_len} tokens, 1 request) and decode steps (1 token each)")
    table = {name: breakdown(prof) for name, prof in columns.items()}
    print_table(table)
    calls = ", ".join(str(num_aten_calls(prof)) for prof in columns.values())
    print(f"   ATen ops called from Python, per column: {calls}")
    if trace is not None:
        prof_batch[1].export_chrome_trace(str(trace))
        print(f"   the batch-1 decode step's Chrome trace: {trace} (open it in ui.perfetto.dev)")

    print("   without the profiler (fastest of several steps):")
    flops = 2 * layer_params * prompt_len
    print(
        f"   prefill: 2 x {layer_params / 1e6:.1f} M layer weights x {prompt_len} tokens = "
        f"{flops / 1e9:.0f} GFLOP in {1e3 * prefill_s:.0f} ms = {flops / prefill_s / 1e9:.0f} "
        f"GFLOP/s (each weight read once, used {prompt_len} times)"
    )
    bandwidth = copy_bandwidth_gbs()
    roof_s = weight_bytes / (bandwidth * 1e9)
    print(
        f"   decode, batch 1: {weight_bytes / 1e6:.0f} MB of weights read for 1 token in "
        f"{1e3 * step_s[1]:.1f} ms = {weight_bytes / step_s[1] / 1e9:.1f} GB/s; this machine "
        f"copies at {bandwidth:.1f} GB/s,\n   so no decode step can beat {1e3 * roof_s:.1f} ms "
        f"({1 / roof_s:.0f} tok/s at batch 1)"
    )
    flops64 = 2 * all_params * 64
    print(
        f"   decode, batch 64: 2 x {all_params / 1e6:.1f} M weights x 64 tokens = "
        f"{flops64 / 1e9:.1f} GFLOP in {1e3 * step_s[64]:.0f} ms = "
        f"{flops64 / step_s[64] / 1e9:.0f} GFLOP/s"
    )
    print("   decode step time against batch size (16-token prompts):")
    for batch, s in step_s.items():
        print(
            f"     batch {batch:2d}: {1e3 * s:6.1f} ms per step, {1e3 * s / batch:5.1f} ms per "
            f"token, {batch / s:6.1f} tok/s"
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--trace", type=Path, default=None, help="write a Chrome trace here")
    args = parser.parse_args()
    run(LLM(), args.prompt_len, args.trace)


if __name__ == "__main__":
    main()
