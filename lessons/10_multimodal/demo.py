"""Lesson 10 demo: one image through the engine, step by step, on a tiny random LLaVA.

Writes a tiny LLaVA checkpoint with transformers (CLIP tower, 32x32 images in 8x8 patches -> 16
image tokens, 2-layer Llama), then:
  1. shows how "w5 <image> w6 w7" becomes 19 token ids and where the image's span lies;
  2. runs it with 6-token steps, printing each step's token span and whether the vision encoder
     ran (once, in the first step; later chunks of the span read the encoder cache);
  3. sends the same picture again (prefix-cache hit on both blocks, no encoder run) and a
     different picture with the same text (only the text block hits; the encoder runs).
The model's weights are random, so its words mean nothing; the bookkeeping is the lesson.

    .venv/bin/python lessons/10_multimodal/demo.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.multimodal.llava_checkpoint import make_tiny_llava, random_image  # noqa: E402
from vllm_mini import LLM, SamplingParams  # noqa: E402

WORDS = " ".join(f"w{i}" for i in range(10, 26))  # 16 words: one KV block of text


def record_schedule(llm: LLM) -> list[tuple[dict, dict]]:
    """Every SchedulerOutput's (tokens per request, encoder inputs per request)."""
    scheduler = llm.llm_engine.engine_core.scheduler
    schedule, steps = scheduler.schedule, []

    def recording():
        out = schedule()
        steps.append((dict(out.num_scheduled_tokens), dict(out.scheduled_encoder_inputs)))
        return out

    scheduler.schedule = recording
    return steps


def main() -> dict:
    path = make_tiny_llava(Path(tempfile.mkdtemp(prefix="lesson10_")))
    llm = LLM(str(path), max_num_batched_tokens=6, kv_cache_memory_bytes=1 << 22)
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    image = random_image(0)
    processor = llm.llm_engine.processor

    # 1. Placeholder expansion.
    prompt = {"prompt": "w5 <image> w6 w7", "multi_modal_data": {"image": image}}
    _, request = processor.process_inputs("show", prompt, params)
    span = request.mm_features[0].mm_position
    ids = request.prompt_token_ids
    print(f"prompt ids ({len(ids)}): {ids[:3]} ... {ids[-3:]}")
    print(
        f"image span: positions [{span.offset}, {span.end}), hash {request.mm_features[0].identifier[:12]}"
    )

    # 2. Chunked prefill over the span; the encoder runs once.
    steps = record_schedule(llm)
    llm.generate(prompt, params, use_tqdm=False)
    done = 0
    for i, (tokens, encoder) in enumerate(steps):
        n = next(iter(tokens.values()), 0)
        ran = "encoder runs" if encoder else "encoder cache"
        touches = span.overlap(done, done + n) is not None
        print(
            f"step {i}: positions [{done}, {done + n})"
            + (f"  image rows via {ran}" if touches else "")
        )
        done += n
    cache = llm.llm_engine.engine_core.scheduler.encoder_cache_manager
    figures = {"encoder_runs_first": cache.num_encoder_runs}
    figures["chunk_steps"] = sum(1 for tokens, _ in steps if tokens) - params.max_tokens + 1

    # 3. Prefix caching keyed by the image's hash.
    long_prompt = f"{WORDS} <image> w30 w31"  # block 0 = text, block 1 = the image's 16 tokens
    llm.generate(
        {"prompt": long_prompt, "multi_modal_data": {"image": image}}, params, use_tqdm=False
    )
    same = llm.generate(
        {"prompt": long_prompt, "multi_modal_data": {"image": image}}, params, use_tqdm=False
    )[0]
    other = llm.generate(
        {"prompt": long_prompt, "multi_modal_data": {"image": random_image(1)}},
        params,
        use_tqdm=False,
    )[0]
    figures["cached_same_image"] = same.num_cached_tokens
    figures["cached_other_image"] = other.num_cached_tokens
    figures["encoder_runs_after"] = cache.num_encoder_runs
    print(f"same image again:  {same.num_cached_tokens} prompt tokens from the prefix cache")
    print(f"other image:       {other.num_cached_tokens} prompt tokens from the prefix cache")
    print(f"encoder runs in all: {cache.num_encoder_runs} (two distinct pictures)")
    return figures


if __name__ == "__main__":
    main()
