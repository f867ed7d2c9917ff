"""Quantization methods side by side: speed, weight bytes, and what they cost in quality.

Stage 7. For each entry of METHODS (the default SmolLM2 GGUF dequantized to float32 -- the path
before stage 7 --, dequantized to bfloat16, and run from its Q4_1/Q8_0 blocks by the `gguf`
method; another method is one more entry) we measure, in this one process, taking turns:
- batch-1 decode tokens/s (median of --repeats runs) next to its roof: copy bandwidth divided by
  the bytes read per token (every weight once; the tied embedding table is read as the LM head);
- throughput: the random workload of benchmarks/throughput.py (common.random_workload), scaled
  down by default to fit a 2-core CPU, median of --throughput-repeats runs (the prefix cache is
  emptied before each, so a repeat recomputes every prompt);
- quality: perplexity on the first --ppl-tokens tokens of the GPL-3 text Debian ships in
  /usr/share/common-licenses/GPL-3 (else Python's pydoc_data/topics.py), in windows of
  --ppl-window tokens, and greedy agreement with the first entry over fixed chat prompts;
- llama.cpp (llama-cpp-python in the peer venv of benchmarks/peers.py) batch-1 decode on the same
  GGUF file with n_threads=2, or "absent".

    python benchmarks/quantization.py [--methods float32,gguf] [--skip-throughput] [--skip-quality]
    python benchmarks/quantization.py --sweep-m    # gguf and fp8 kernels vs decode+GEMM per M
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_workload  # noqa: E402
from latency import copy_bandwidth_gbs  # noqa: E402
from quantized_checkpoints import cache_root  # noqa: E402

from vllm_mini import LLM, SamplingParams  # noqa: E402
from vllm_mini.attention.backends.abstract import AttentionMetadata  # noqa: E402
from vllm_mini.engine.arg_utils import EngineArgs  # noqa: E402
from vllm_mini.forward_context import set_forward_context  # noqa: E402
from vllm_mini.model_executor.model_loader import get_model  # noqa: E402


@dataclass
class Method:
    name: str  # the row label (and what --methods selects)
    llm_kwargs: dict = field(default_factory=dict)  # LLM(...) / EngineArgs(...) arguments
    note: str = ""
    env: dict = field(default_factory=dict)  # environment while the model loads (path switches)


@contextmanager
def method_env(method: Method) -> Iterator[None]:
    """Set the method's environment variables while its model loads, then restore them."""
    from vllm_mini.model_executor.layers.quantization.utils import gguf_ops

    saved = {key: os.environ.get(key) for key in method.env}
    os.environ.update(method.env)
    # gguf_ops reads VLLM_MINI_GGUF_INT8_ACT at import; the layers look at the flag when they load.
    int8_saved = gguf_ops.INT8_ACTIVATIONS
    if "VLLM_MINI_GGUF_INT8_ACT" in method.env:
        gguf_ops.INT8_ACTIVATIONS = method.env["VLLM_MINI_GGUF_INT8_ACT"] != "0"
    try:
        yield
    finally:
        gguf_ops.INT8_ACTIVATIONS = int8_saved
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


QUANTIZED = cache_root() / "quantized"  # where quantized_checkpoints.py caches its checkpoints
METHODS = [
    Method("float32", {"dtype": "float32"}, "GGUF dequantized at load (before stage 7)"),
    Method("bfloat16", {"dtype": "bfloat16"}, "GGUF dequantized to bfloat16"),
    Method("gguf", {"quantization": "gguf"}, "Q4_1/Q8_0 blocks, int8-activation C++ kernel"),
    Method(
        "gguf-float",
        {"quantization": "gguf"},
        "Q4_1/Q8_0 blocks, float-activation kernels (VLLM_MINI_GGUF_INT8_ACT=0)",
        env={"VLLM_MINI_GGUF_INT8_ACT": "0"},
    ),
    Method(
        "fp8",
        {"quantization": "fp8", "dtype": "float32"},
        "online fp8 per channel, C++ W8A16 kernel (codes stay fp8)",
    ),
    Method(
        "fp8-bf16",
        {"quantization": "fp8", "dtype": "bfloat16"},
        "online fp8 per channel, kernel, bfloat16 activations",
    ),
    # The path before the kernel: the fp8 weight dequantized once to float32 after loading.
    Method(
        "fp8-dequant",
        {"quantization": "fp8", "dtype": "float32"},
        "online fp8, dequantized once (VLLM_MINI_CPU_FP8_KERNEL=0)",
        env={"VLLM_MINI_CPU_FP8_KERNEL": "0"},
    ),
    # llm-compressor checkpoints of the same float32 weights: make them first with
    # `python benchmarks/quantized_checkpoints.py w8a8-int8-rtn` (and fp8-dynamic).
    Method(
        "w8a8-int8",
        {"model": str(QUANTIZED / "w8a8-int8-rtn")},
        "compressed-tensors W8A8, int8_linear (C++ quantize + _int_mm + epilogue)",
    ),
    Method(
        "fp8-dynamic", {"model": str(QUANTIZED / "fp8-dynamic")}, "compressed-tensors FP8_DYNAMIC"
    ),
    # `python benchmarks/quantized_checkpoints.py w4a16-rtn`: int4 groups of 64 with zero
    # points (GPTQ and AWQ checkpoints load into the same kernel, so run at the same speed).
    Method(
        "w4a16",
        {"model": str(QUANTIZED / "w4a16-rtn")},
        "compressed-tensors W4A16, C++ int4 kernel",
    ),
    # Calibrated 4-bit rounding on the same grid (groups of 64) and kernel, both by llm-compressor
    # on 64 x 256 tokens of pydoc topics (neither sees the perplexity text, GPL-3): GPTQ from
    # `python benchmarks/quantized_checkpoints.py w4a16-gptq` (symmetric), AWQ from `... w4a16-awq`
    # (activation-aware scales, then zero points like w4a16). AutoAWQ 0.2.9's own SmolLM2
    # checkpoint (benchmarks/autoawq_checkpoints.py) is not a row: its scale search is broken on
    # CPU (that file explains it and patches it); its format stays tested on the tiny model.
    Method(
        "w4a16-gptq",
        {"model": str(QUANTIZED / "w4a16-gptq")},
        "llm-compressor GPTQ W4A16, calibrated",
    ),
    Method(
        "awq",
        {"model": str(QUANTIZED / "w4a16-awq")},
        "llm-compressor AWQ W4A16_ASYM, calibrated",
    ),
]
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a GPU is in one sentence.",
    "List three fruits.",
    "What is 12 times 7?",
    "Why is the sky blue?",
]
LLAMACPP_PYTHON = Path.home() / ".cache/vllm_mini/peers/llamacpp/bin/python"


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter (shared ones once): what one decode step reads."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def decode_tok_s(llm: LLM, prompt: list[int], n: int, repeats: int) -> list[float]:
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=4), use_tqdm=False)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
        rates.append(n / (time.perf_counter() - t))
    return rates


def throughput_tok_s(
    llm: LLM, prompts: list[list[int]], out_lens: list[int], repeats: int = 1
) -> float:
    """Output tokens/s on the workload, the median of `repeats` runs."""
    reqs = [{"prompt_token_ids": p} for p in prompts]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in out_lens]
    rates = []
    for _ in range(repeats):
        # A second run would otherwise find every prompt's blocks cached and skip the prefills.
        if not llm.llm_engine.reset_prefix_cache():
            raise RuntimeError("the prefix cache could not be emptied: blocks are still in use")
        t = time.perf_counter()
        outs = llm.generate(reqs, params, use_tqdm=False)
        elapsed = time.perf_counter() - t
        rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / elapsed)
    return statistics.median(rates)


def greedy(llm: LLM, prompt_ids: list[list[int]], n: int) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def agreement(ours: list[list[int]], ref: list[list[int]]) -> float:
    """Mean fraction of each reference continuation reproduced before the first difference."""
    fracs = []
    for a, b in zip(ours, ref):
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(b))
        fracs.append(same / len(b))
    return sum(fracs) / len(fracs)


def english_text() -> tuple[str, str]:
    gpl = Path("/usr/share/common-licenses/GPL-3")
    if gpl.exists():
        return str(gpl), gpl.read_text()
    import pydoc_data.topics as topics

    return topics.__file__, "\n".join(topics.topics.values())


def scoring_model(method: Method) -> torch.nn.Module:
    """The method's model alone, on the naive attention backend: one call scores a window."""
    args = EngineArgs(attention_backend="naive", **method.llm_kwargs)
    with method_env(method):
        return get_model(args.create_engine_config())


def _window_metadata(req_id: str, n: int) -> AttentionMetadata:
    return AttentionMetadata(
        num_actual_tokens=n,
        max_query_len=n,
        max_seq_len=n,
        query_start_loc=torch.tensor([0, n], dtype=torch.int32),
        seq_lens=torch.tensor([n], dtype=torch.int32),
        block_table=torch.zeros(1, 1, dtype=torch.int32),
        slot_mapping=torch.zeros(n, dtype=torch.int64),
        query_start_loc_cpu=[0, n],
        seq_lens_cpu=[n],
        req_ids=[req_id],
    )


@torch.inference_mode()
def perplexity(model: torch.nn.Module, ids: list[int], window: int) -> float:
    """exp(mean next-token NLL), the text cut into independent windows of `window` tokens."""
    nll, count = 0.0, 0
    for i, start in enumerate(range(0, len(ids) - 1, window)):
        chunk = torch.tensor(ids[start : start + window + 1])
        inputs, targets = chunk[:-1], chunk[1:]
        with set_forward_context(_window_metadata(f"ppl{i}", len(inputs))):
            hidden = model(inputs, torch.arange(len(inputs)))
            logits = model.compute_logits(hidden).float()
        nll += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count += len(targets)
    return math.exp(nll / count)


_LLAMACPP_SCRIPT = """
import json, sys, time
from llama_cpp import Llama
path, prompt, n, repeats = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_threads=2, n_threads_batch=2, n_ctx=512, verbose=False)
rates = []
for r in range(repeats + 1):
    gen = llm.generate(prompt, top_k=1, temp=0.0, reset=True)
    next(gen)  # the prompt's prefill and the first token are not decode
    t = time.perf_counter()
    for _ in range(n):
        next(gen)
    if r:  # the first run warms up
        rates.append(n / (time.perf_counter() - t))
print(json.dumps(rates))
"""


def llamacpp_decode(gguf: str, prompt: list[int], n: int, repeats: int) -> list[float] | None:
    """llama.cpp's batch-1 decode rates on the same file, or None if its peer venv is absent."""
    if not LLAMACPP_PYTHON.exists():
        return None
    cmd = [str(LLAMACPP_PYTHON), "-c", _LLAMACPP_SCRIPT, gguf, json.dumps(prompt), str(n)]
    out = subprocess.run([*cmd, str(repeats)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        print(f"llama.cpp peer failed: {out.stderr.strip()[-500:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def sweep_m() -> None:
    """Per token count M, on SmolLM2's Q4_1 shapes: the int8-activation kernel (the default, one
    path for every M), the float kernel, and decode-the-matrix + float GEMM (the float path's
    choice from gguf_ops.GEMM_MIN_TOKENS on)."""
    from vllm_mini.model_executor.layers.quantization.utils import gguf_ops, gguf_q8

    assert gguf_ops.KERNEL_AVAILABLE, "vllm_mini._C has no gguf_gemm: run `make kernels`"
    torch.manual_seed(0)
    print(
        "| M | N x K | int8 kernel ms | float kernel ms | decode+GEMM ms |\n|---|---|---|---|---|"
    )
    for n, k in ((1536 * 2, 576), (576, 1536)):
        cols_bytes = k // 32 * 20  # Q4_1
        blocks = torch.randint(0, 255, (n, cols_bytes), dtype=torch.uint8)
        blocks.view(-1, 20)[:, :4] = 0x10  # small finite float16 d and m
        packed = gguf_q8.pack_q8(blocks, 3)
        for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
            x = torch.randn(m, k)
            t_int8 = _median_ms(torch.ops.vllm_mini_C.gguf_gemm_q8, x, packed, 3, n)
            t_kernel = _median_ms(torch.ops.vllm_mini_C.gguf_gemm, x, blocks, 3)
            t_gemm = _median_ms(_decode_then_gemm, x, blocks, 3)
            print(f"| {m} | {n} x {k} | {t_int8:.3f} | {t_kernel:.3f} | {t_gemm:.3f} |")
    sweep_m_fp8()


def sweep_m_fp8() -> None:
    """The same for the fp8 kernel, per activation dtype: where fp8_ops.GEMM_MIN_TOKENS comes from."""
    from vllm_mini.model_executor.layers.quantization.utils import fp8_ops, w8a8_utils

    assert fp8_ops.KERNEL_AVAILABLE, "vllm_mini._C has no fp8_gemm: run `make kernels`"
    print("\n| dtype | M | N x K | fp8 kernel ms | dequantize+GEMM ms |\n|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for n, k in ((1536 * 2, 576), (576, 1536)):
            codes, scale = w8a8_utils.quantize_weight_fp8(torch.randn(n, k))
            scale = scale.reshape(-1).contiguous()
            for m in (1, 4, 8, 16, 32, 64, 128):
                x = torch.randn(m, k).to(dtype)
                t_kernel = _median_ms(
                    torch.ops.vllm_mini_C.fp8_gemm, x, codes.view(torch.uint8), scale
                )
                t_gemm = _median_ms(_fp8_dequantize_then_gemm, x, codes, scale)
                print(f"| {dtype} | {m} | {n} x {k} | {t_kernel:.3f} | {t_gemm:.3f} |")


def _fp8_dequantize_then_gemm(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor):
    from vllm_mini.model_executor.layers.quantization.utils.fp8_ops import fp8_dequantize

    return torch.nn.functional.linear(x, fp8_dequantize(codes, scale).to(x.dtype))


def _decode_then_gemm(x: torch.Tensor, blocks: torch.Tensor, type_id: int) -> torch.Tensor:
    from vllm_mini.model_executor.layers.quantization.utils.gguf_ops import gguf_dequantize

    return torch.nn.functional.linear(x, gguf_dequantize(blocks, type_id, x.shape[1]))


def _median_ms(fn, *args, repeats: int = 15) -> float:
    fn(*args)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=",".join(m.name for m in METHODS))
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--ppl-tokens", type=int, default=2048)
    parser.add_argument("--ppl-window", type=int, default=512)
    parser.add_argument("--throughput-repeats", type=int, default=3)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-llamacpp", action="store_true")
    parser.add_argument("--sweep-m", action="store_true")
    args = parser.parse_args()
    if args.sweep_m:
        sweep_m()
        return
    chosen = [m for m in METHODS if m.name in args.methods.split(",")]
    prompt = random_workload(1, 32, 32, 1, 1, seed=0)[0][0]
    workload = random_workload(args.num_requests, 32, 256, 32, 128, seed=0)
    bandwidth = copy_bandwidth_gbs()
    text_source, text = english_text()
    rows, reference_greedy, gguf_file = [], None, None
    for method in chosen:
        with method_env(method):
            llm = LLM(**method.llm_kwargs)
        model = llm.llm_engine.engine_core.worker.model_runner.model
        gguf_file = gguf_file or llm.llm_engine.vllm_config.model_config.source.gguf_file
        row = {"method": method.name, "note": method.note, "bytes": weight_bytes(model)}
        row["decode"] = statistics.median(decode_tok_s(llm, prompt, args.output_len, args.repeats))
        if not args.skip_throughput:
            row["throughput"] = throughput_tok_s(llm, *workload, args.throughput_repeats)
        if not args.skip_quality:
            tok = llm.get_tokenizer()
            chats = [
                tok.encode(
                    tok.apply_chat_template(
                        [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                    ),
                    add_special_tokens=False,
                )
                for p in PROMPTS
            ]
            outs = greedy(llm, chats, 32)
            reference_greedy = reference_greedy or outs
            row["agree"] = agreement(outs, reference_greedy)
            del llm
            gc.collect()
            ids = tok.encode(text, add_special_tokens=False)[: args.ppl_tokens + 1]
            row["ppl"] = perplexity(scoring_model(method), ids, args.ppl_window)
        rows.append(row)
        gc.collect()
    peer = None
    if not args.skip_llamacpp and gguf_file:
        peer = llamacpp_decode(str(gguf_file), prompt, args.output_len, args.repeats)
    _print_table(rows, bandwidth, peer, text_source, args)


def _print_table(rows, bandwidth, peer, text_source, args) -> None:
    base = rows[0]
    print(f"\ncopy bandwidth {bandwidth:.1f} GB/s; batch-1 decode: prompt 32, {args.output_len}")
    print(
        f"tokens, median of {args.repeats}; perplexity: {args.ppl_tokens} tokens of {text_source}"
    )
    print(
        "| method | weight MB | decode tok/s | x first | roof tok/s | % roof | throughput tok/s "
        "| x first | ppl | greedy agree |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        roof = bandwidth * 1e9 / r["bytes"]
        tput = r.get("throughput")
        print(
            f"| {r['method']} | {r['bytes'] / 1e6:.0f} | {r['decode']:.1f} | "
            f"{r['decode'] / base['decode']:.2f} | {roof:.1f} | {100 * r['decode'] / roof:.0f} | "
            + (f"{tput:.1f} | {tput / base['throughput']:.2f} | " if tput else "- | - | ")
            + (f"{r['ppl']:.3f} | {100 * r['agree']:.0f}% |" if "ppl" in r else "- | - |")
        )
    if peer:
        med = statistics.median(peer)
        print(
            f"| llama.cpp (n_threads=2) | same file | {med:.1f} | "
            f"{med / base['decode']:.2f} | | | | | | |"
        )
    else:
        print("| llama.cpp (n_threads=2) | absent | | | | | | | | |")


if __name__ == "__main__":
    main()
