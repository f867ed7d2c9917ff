"""Multimodal serving: where the time of an image request goes, and what the encoder cache saves.

Stage 10 benchmark. No vision-language checkpoint can be had without a hub download, so the model
is a random LLaVA with real shapes, written by transformers: a CLIP ViT-B/16 tower (224x224
images -> 196 patches, 12 layers of width 768, LLaVA reads the 11th) and a SmolLM2-135M-shaped
Llama (30 layers of width 576; the tiny 384-word vocabulary). Three measurements:
- per image request, the time in the vision encoder (its runs inside the engine, timed) against
  the time of everything else in the engine's steps (the language model, scheduling, sampling);
- the encoder cache on a workload that repeats images: 32 requests over 8 distinct pictures;
  hit rate = 1 - encoder runs / images requested;
- throughput of a mixed workload: half text-only, half image requests, against the same number of
  text-only requests alone.
Greedy, 32 output tokens, ignore_eos.

    python benchmarks/multimodal.py [--requests 32] [--distinct-images 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.multimodal.llava_checkpoint import make_tiny_llava, random_image  # noqa: E402
from vllm_mini import LLM, SamplingParams  # noqa: E402

TEXT = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=2048,
    initializer_range=0.02,
)
VISION = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=16,
    initializer_range=0.02,
)
PARAMS = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)


def make_model() -> Path:
    path = Path(tempfile.mkdtemp(prefix="bench_llava_"))
    return make_tiny_llava(path, text_overrides=TEXT, vision_overrides=VISION)


def timed_encoder(llm: LLM) -> list[float]:
    """Wrap the model's encoder so every run's seconds are recorded."""
    runner = llm.llm_engine.engine_core.worker.model_runner
    model = runner._eager_model()
    encode, times = model.get_multimodal_embeddings, []

    def timed(pixels):
        start = time.perf_counter()
        out = encode(pixels)
        times.append(time.perf_counter() - start)
        return out

    model.get_multimodal_embeddings = timed
    return times


def prompt(i: int, image=None):
    text = " ".join(f"w{3 + (i * 7 + j) % 300}" for j in range(24))
    if image is None:
        return text
    return {"prompt": f"{text} <image> w5 w6", "multi_modal_data": {"image": image}}


def run(llm: LLM, prompts: list) -> tuple[float, int]:
    start = time.perf_counter()
    outs = llm.generate(prompts, PARAMS, use_tqdm=False)
    return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--distinct-images", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    path = make_model()
    llm = LLM(str(path), max_num_seqs=16, enable_prefix_caching=False)
    encoder_times = timed_encoder(llm)
    cache = llm.llm_engine.engine_core.scheduler.encoder_cache_manager
    run(llm, [prompt(0, random_image(999))])  # warm-up

    # 1. One image request at a time: encoder vs the rest.
    encoder_times.clear()
    single = []
    for i in range(2):
        seconds, _ = run(llm, [prompt(i, random_image(100 + i))])
        single.append((seconds, encoder_times[-1]))
    enc = sum(e for _, e in single) / len(single)
    total = sum(s for s, _ in single) / len(single)
    print(
        f"per image request (batch 1): encoder {enc * 1e3:.1f} ms, rest {(total - enc) * 1e3:.1f} ms"
        f" ({enc / total:.1%} of {total * 1e3:.0f} ms)"
    )

    # 2. Encoder cache hit rate on repeated images.
    images = [random_image(200 + i) for i in range(args.distinct_images)]
    runs_before = cache.num_encoder_runs
    seconds, tokens = run(llm, [prompt(i, images[i % len(images)]) for i in range(args.requests)])
    runs = cache.num_encoder_runs - runs_before
    print(
        f"repeated images: {args.requests} image requests, {len(images)} distinct pictures, "
        f"{runs} encoder runs, hit rate {1 - runs / args.requests:.1%}, {tokens / seconds:.1f} tok/s"
    )

    # 3. Mixed text/image throughput against text only.
    text_only = [prompt(i) for i in range(args.requests)]
    mixed = [prompt(i, random_image(300 + i) if i % 2 else None) for i in range(args.requests)]
    t_text, n_text = run(llm, text_only)
    t_mixed, n_mixed = run(llm, mixed)
    print(f"text only: {n_text / t_text:.1f} tok/s, {args.requests / t_text:.2f} req/s")
    print(
        f"mixed (half with a new image): {n_mixed / t_mixed:.1f} tok/s, "
        f"{args.requests / t_mixed:.2f} req/s"
    )


if __name__ == "__main__":
    main()
