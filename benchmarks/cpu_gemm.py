"""The CPU GEMM backends side by side: every linear of one SmolLM2-135M step, as the engine runs it.

Stage 2 benchmark for vllm_mini/model_executor/layers/utils.py. One "step" is the 121 matmuls of
a forward pass (30 layers x qkv, o, gate_up, down, then the LM head), each layer with its own
weight, so that every weight comes from memory as in the engine (a benchmark that calls one
small weight again and again measures the cache instead). For each number of rows M and dtype
it times the step with our dense kernel (csrc/cpu/dense_gemm.cpp) and with oneDNN's matmul
(vLLM's choice on CPU), each on its own packed weights, alternating the two so that a noisy
machine slows both alike, and prints medians and the ratio (> 1: dense faster). `--with-torch`
adds F.linear on the plain weights. The engine itself is compared with VLLM_MINI_CPU_GEMM=
dense/onednn in latency.py and throughput.py.

    python benchmarks/cpu_gemm.py [--rows 1 10 64 1024] [--dtypes float32 bfloat16] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vllm_mini.model_executor.layers.utils import dense_linear, onednn_linear, pack_dense

# SmolLM2-135M: hidden 576, 9 query heads and 3 KV heads of 64, MLP 1536, vocab 49152.
LAYER_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # qkv, o, gate_up, down
LM_HEAD = (49152, 576)
NUM_LAYERS = 30


def make_step(weights: list[torch.Tensor], run: Callable, rows: int, dtype: torch.dtype):
    """A function running `run(x, w)` once for every weight, x of `rows` rows."""
    xs = {k: torch.randn(rows, k).to(dtype) for k in {w_in for _, w_in in [*LAYER_SHAPES, LM_HEAD]}}
    pairs = [(xs[in_f], w) for w, (_, in_f) in zip(weights, _all_shapes())]

    def step() -> None:
        for x, w in pairs:
            run(x, w)

    return step


def _all_shapes() -> list[tuple[int, int]]:
    return LAYER_SHAPES * NUM_LAYERS + [LM_HEAD]


def medians(steps: dict[str, Callable], repeats: int) -> dict[str, float]:
    for step in steps.values():  # warm-up: oneDNN builds its kernel per shape on the first call
        step(), step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default (all cores)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 10, 16, 64, 256, 1024])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--with-torch", action="store_true", help="also time F.linear")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    extra = " F.linear ms |" if args.with_torch else ""
    print(f"| dtype | M | dense ms | oneDNN ms | dense speedup |{extra}")
    print("|---|---|---|---|---|" + ("---|" if args.with_torch else ""))
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        plain = [torch.randn(o, i).div(i**0.5).to(dtype) for o, i in _all_shapes()]
        packed = {
            "dense": [pack_dense(w) for w in plain],
            "onednn": [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in plain],
        }
        for rows in args.rows:
            steps = {
                "dense": make_step(packed["dense"], dense_linear, rows, dtype),
                "onednn": make_step(packed["onednn"], onednn_linear, rows, dtype),
            }
            if args.with_torch:
                steps["torch"] = make_step(plain, F.linear, rows, dtype)
            t = medians(steps, args.repeats)
            line = (
                f"| {dtype_name} | {rows} | {t['dense']:.2f} | {t['onednn']:.2f} | "
                f"{t['onednn'] / t['dense']:.2f}x |"
            )
            print(line + (f" {t['torch']:.2f} |" if args.with_torch else ""), flush=True)


if __name__ == "__main__":
    main()
