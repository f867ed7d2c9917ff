"""Eager vs torch.compile on CPU: decode step time, ATen calls per step, start-up cold and warm.

Stage 6. Each configuration runs in its own process (a warm start must be a new process that
finds the compile cache on disk): eager (mode 0); compiled (mode 3) with an empty cache dir
(cold); compiled again with that dir (warm). Each child builds `LLM()` (the default model in
`--dtype`: float32, the dequantized path, by default; `auto` runs the stage-7 gguf method), times start-up up to the first generated token, then times decode steps of the engine
at batch 1, 8 and 32 (median over steps, prefill excluded) and counts the `aten::` operators one
batch-1 decode step runs, with torch.profiler. Prints ratios and appends a row per batch to
benchmarks/RESULTS.md (`--no-record` to skip).

    .venv/bin/python benchmarks/compile.py [--batches 1 8 32] [--steps 24] [--dtype float32]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## torch.compile vs eager on CPU — `benchmarks/compile.py`"


def child(mode: int, cache_dir: str, batches: list[int], steps: int, dtype: str) -> dict:
    import torch

    from vllm_mini import LLM, SamplingParams

    start = time.perf_counter()
    config = {"mode": mode, "cache_dir": cache_dir}
    llm = LLM(dtype=dtype, compilation_config=config, max_num_seqs=64)
    llm.generate([{"prompt_token_ids": [1, 2, 3, 4]}], SamplingParams(max_tokens=1), use_tqdm=False)
    startup = time.perf_counter() - start
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=steps + 4, ignore_eos=True)
    result = {"mode": mode, "startup_s": startup, "step_ms": {}, "aten_calls": None}
    for batch in batches:
        for i in range(batch):
            engine.add_request(f"b{batch}-{i}", {"prompt_token_ids": [10 + i] * 16}, params)
        engine.step()  # the prefill of every request (16 tokens each fit one step's budget)
        times = []
        while engine.has_unfinished_requests():
            t = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - t)
            if batch == 1 and result["aten_calls"] is None and len(times) == 3:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
                    engine.step()
                names = [e.name for e in p.events()]
                result["aten_calls"] = sum(n.startswith("aten::") for n in names)
                result["top_ops"] = _top_ops(p)
        result["step_ms"][batch] = 1000 * statistics.median(times[2:])
    return result


def _top_ops(prof) -> list[tuple[str, float]]:
    rows = sorted(prof.key_averages(), key=lambda r: r.self_cpu_time_total, reverse=True)
    return [(r.key, round(r.self_cpu_time_total / 1000, 2)) for r in rows[:6]]


def run_child(mode: int, cache_dir: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(mode), cache_dir, "--steps", str(args.steps)]
    cmd += ["--batches", *map(str, args.batches), "--dtype", args.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or auto (gguf)")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CACHE_DIR"))
    args = parser.parse_args()
    if args.child:
        mode, cache = int(args.child[0]), args.child[1]
        print(json.dumps(child(mode, cache, args.batches, args.steps, args.dtype)))
        return
    cache_dir = tempfile.mkdtemp(prefix="vllm_mini_compile_")
    eager = run_child(0, cache_dir, args)
    cold = run_child(3, cache_dir, args)
    warm = run_child(3, cache_dir, args)
    print(f"start-up to first token: eager {eager['startup_s']:.1f} s, compiled cold "
          f"{cold['startup_s']:.1f} s, warm {warm['startup_s']:.1f} s")  # fmt: skip
    print(f"ATen calls per batch-1 decode step: eager {eager['aten_calls']}, compiled "
          f"{warm['aten_calls']}")  # fmt: skip
    print("top self-CPU ops, compiled:", warm.get("top_ops"))
    rows = []
    for batch in args.batches:
        e, c = eager["step_ms"][str(batch)], warm["step_ms"][str(batch)]
        print(f"batch {batch:3d}: eager {e:7.2f} ms/step ({1000 * batch / e:6.1f} tok/s), "
              f"compiled {c:7.2f} ms/step ({1000 * batch / c:6.1f} tok/s), {e / c:.2f}x")  # fmt: skip
        rows.append((batch, e, c))
    if not args.no_record:
        record(rows, eager, cold, warm, args.dtype)


def record(rows, eager, cold, warm, dtype: str) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    date = datetime.date.today().isoformat()
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    lines = [
        f"| {date} | {machine} | {commit} | {b} ({dtype}) | {e:.2f} ({1000 * b / e:.1f} tok/s) | "
        f"{c:.2f} ({1000 * b / c:.1f} tok/s) | **{e / c:.2f}×** | {eager['aten_calls']} / "
        f"{warm['aten_calls']} | {eager['startup_s']:.0f} / {cold['startup_s']:.0f} / "
        f"{warm['startup_s']:.0f} |"
        for b, e, c in rows
    ]
    text = RESULTS.read_text()
    header = (
        "| date | machine | commit | batch | eager ms/step | compiled ms/step | ratio | "
        "ATen calls per step (batch 1) eager / compiled | start-up s eager / cold / warm |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    if SECTION not in text:
        text += f"\n{SECTION}\n\nSee the script's docstring for the method.\n\n{header}"
    head, _, tail = text.partition(SECTION)
    table_start = tail.index("|---|") + tail[tail.index("|---|") :].index("\n") + 1
    tail = tail[:table_start] + "\n".join(lines) + "\n" + tail[table_start:]
    RESULTS.write_text(head + SECTION + tail)


if __name__ == "__main__":
    main()
