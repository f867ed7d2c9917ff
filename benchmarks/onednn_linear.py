"""Per-layer timing: a prepacked oneDNN matmul against F.linear on SmolLM2-135M's layer shapes.

Stage 2 benchmark for vllm_mini/model_executor/layers/utils.py. For each weight shape [out, in],
number of rows M and dtype, it times `F.linear` on the weight as the engine stores it (fp32 layer
weights column-major, see linear.py; the LM head row-major) and `onednn_linear` on `prepack_weight(weight)`, alternating the two so
that a noisy machine slows both alike, and prints medians in ms and the ratio (> 1: packed wins).
The layer weights stay in cache here (the same weight every call), the LM head's 113 MB do not;
the engine, which streams every weight once a step, is measured by latency.py and throughput.py
with VLLM_MINI_CPU_ONEDNN=0/1.

    python benchmarks/onednn_linear.py [--threads 1 2] [--rows 1 16 128] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vllm_mini.model_executor.layers.utils import onednn_linear, prepack_weight

# SmolLM2-135M: hidden 576, 9 query heads and 3 KV heads of 64, MLP 1536, vocab 49152.
SHAPES = {
    "q/o 576x576": (576, 576),
    "k/v 192x576": (192, 576),
    "qkv 960x576": (960, 576),
    "gate_up 3072x576": (3072, 576),
    "down 576x1536": (576, 1536),
    "LM head 49152x576": (49152, 576),
}


def _alternating_medians(a: Callable, b: Callable, repeats: int) -> tuple[float, float]:
    for _ in range(3):  # warm-up: oneDNN builds its kernel for this shape on the first call
        a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, ts in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print("| threads | dtype | layer | M | F.linear ms | packed ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for name, (out_f, in_f) in SHAPES.items():
                w = torch.randn(out_f, in_f).div(in_f**0.5).to(dtype)
                # As the engine stores them: linear.py makes fp32 layer weights column-major; the
                # LM head is the embedding table, row-major.
                column_major = dtype == torch.float32 and not name.startswith("LM head")
                plain = w.t().contiguous().t() if column_major else w
                packed = prepack_weight(w)
                for rows in args.rows:
                    x = torch.randn(rows, in_f).to(dtype)
                    t_plain, t_packed = _alternating_medians(
                        lambda x=x, w=plain: F.linear(x, w),
                        lambda x=x, p=packed: onednn_linear(x, p),
                        args.repeats,
                    )
                    print(
                        f"| {threads} | {dtype_name} | {name} | {rows} | {t_plain:.3f} | "
                        f"{t_packed:.3f} | {t_plain / t_packed:.2f}x |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
