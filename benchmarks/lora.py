"""Multi-LoRA serving: throughput with 0, 1, 4, 8 adapters in the batch, against the base model.

Stage 9 benchmark. SmolLM2-135M-Instruct (the bundled GGUF, read by transformers and run here in
float32 so that adapters can also be merged), adapters made by PEFT itself (random non-zero A and
B on all seven projections, rank 8 and 16), cached under ~/.cache/vllm_mini/lora_adapters/.
The same seeded mixed workload each time (requests round-robin over the adapters, greedy,
ignore_eos):
- base: the engine without LoRA (the reference step cost);
- unmerged: one engine with enable_lora, every request with its own adapter, all in one batch;
- merged: vLLM's alternative for a single adapter — W + B A folded into the weights (PEFT's
  merge_and_unload), one engine per adapter, requests grouped by adapter and run group after
  group. It costs nothing per token but serves one adapter at a time.
Prints output tok/s and each row's cost relative to the base model (base tok/s / row tok/s).

    python benchmarks/lora.py [--num-adapters 0 1 4 8] [--ranks 8 16] [--merged]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_hf_peer, random_workload  # noqa: E402

from vllm_mini import LLM, SamplingParams  # noqa: E402
from vllm_mini.lora.request import LoRARequest  # noqa: E402

CACHE = Path.home() / ".cache" / "vllm_mini" / "lora_adapters"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapters(rank: int, count: int) -> list[Path]:
    """PEFT adapters for SmolLM2 (cached): random A and B, so every one changes the model."""
    from peft import LoraConfig, get_peft_model

    paths = [CACHE / f"smollm2_r{rank}_{i}" for i in range(count)]
    for i, path in enumerate(paths):
        if (path / "adapter_model.safetensors").is_file():
            continue
        torch.manual_seed(1000 * rank + i)
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False
        )
        model = get_peft_model(load_hf_peer(None, torch.float32), config)
        for name, param in model.named_parameters():
            if "lora_" in name:  # small updates: the model still talks, but differently
                param.data.mul_(0.05)
        model.save_pretrained(path)
    return paths


def merged_checkpoint(adapter: Path) -> Path:
    """W + scaling * B A saved as a plain HF checkpoint (PEFT's merge_and_unload)."""
    from peft import PeftModel

    out = adapter.with_name(adapter.name + "_merged")
    if not (out / "config.json").is_file():
        model = PeftModel.from_pretrained(load_hf_peer(None, torch.float32), adapter)
        merged = model.merge_and_unload()
        # Read from GGUF, transformers marks the model quantized and refuses to save it; the
        # weights are plain float32 tensors by now, so drop the mark.
        merged.hf_quantizer = None
        merged.is_quantized = False
        if hasattr(merged.config, "quantization_config"):
            del merged.config.quantization_config
        merged.save_pretrained(out)
        from transformers import AutoTokenizer

        from vllm_mini.transformers_utils.config import resolve_model_source

        source = resolve_model_source(None)
        gguf = Path(source.gguf_file)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def run(llm: LLM, prompts, out_lens, loras) -> float:
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in out_lens]
    requests = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(requests[:2], params[:2], lora_request=loras[:2], use_tqdm=False)  # warm-up
    start = time.perf_counter()
    llm.generate(requests, params, lora_request=loras, use_tqdm=False)
    return sum(out_lens) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-adapters", type=int, nargs="+", default=[0, 1, 4, 8])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--merged", action="store_true", help="add the merged, grouped rows")
    args = parser.parse_args()
    prompts, out_lens = random_workload(args.num_requests, 32, 128, 32, 96, seed=0)
    prompts = [[t % 49152 for t in p] for p in prompts]
    common = dict(dtype="float32", max_num_seqs=args.max_num_seqs, enable_prefix_caching=False)
    print(
        f"SmolLM2-135M float32, threads {torch.get_num_threads()}, {args.num_requests} requests "
        f"(prompts 32-128, outputs 32-96), max_num_seqs {args.max_num_seqs}, greedy"
    )
    base = run(LLM(**common), prompts, out_lens, [None] * len(prompts))
    print(f"{'setup':<34} {'tok/s':>8} {'cost vs base':>13}")
    print(f"{'base model, LoRA off':<34} {base:>8.1f} {1.0:>13.2f}")
    for rank in args.ranks:
        max_n = max(args.num_adapters)
        paths = make_adapters(rank, max_n)
        for n in args.num_adapters:
            # Slots sized for the workload, as a user would: the CPU path multiplies every token
            # by every slot (punica_wrapper.py), so idle slots and spare rank cost arithmetic.
            llm = LLM(**common, enable_lora=True, max_loras=max(1, n), max_lora_rank=rank)
            loras = [
                LoRARequest(f"r{rank}_{i % n}", i % n + 1, str(paths[i % n])) if n else None
                for i in range(len(prompts))
            ]
            tps = run(llm, prompts, out_lens, loras)
            label = f"unmerged, {n} adapters, rank {rank}"
            print(f"{label:<34} {tps:>8.1f} {base / tps:>13.2f}", flush=True)
            del llm
        if args.merged:
            for n in [n for n in args.num_adapters if 0 < n <= 4]:  # 540 MB per merged copy
                total_tokens, total_time = 0, 0.0
                for i in range(n):
                    group = [j for j in range(len(prompts)) if j % n == i]
                    engine = LLM(str(merged_checkpoint(paths[i])), **common)
                    tps = run(engine, [prompts[j] for j in group], [out_lens[j] for j in group],
                              [None] * len(group))  # fmt: skip
                    tokens = sum(out_lens[j] for j in group)
                    total_tokens += tokens
                    total_time += tokens / tps
                    del engine
                tps = total_tokens / total_time
                label = f"merged, {n} adapters grouped, rank {rank}"
                print(f"{label:<34} {tps:>8.1f} {base / tps:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
