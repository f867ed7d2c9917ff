"""Run the real engine on a workload with the TraceRecorder attached, and return the Trace.

Stages 4-5 teaching tool. Mirrors the driving loop of vllm/entrypoints/llm.py (`_run_engine`):
add requests, call `LLMEngine.step()` until nothing is left. The one difference is arrival: the
visualizer can add a request every few steps instead of all at once, so you can watch requests
join a running batch (continuous batching). With `num_speculative_tokens` > 0 the engine runs
n-gram speculative decoding (stage 11, vllm/v1/spec_decode/ngram_proposer.py). Next: block_grid.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

from vllm_mini import LLM, SamplingParams
from vllm_mini.engine.trace import Trace, TraceRecorder


@dataclass(frozen=True)
class RunSettings:
    model: str | None = None  # None = the default model (SmolLM2-135M-Instruct GGUF)
    block_size: int = 16
    num_blocks: int = 64
    max_num_seqs: int = 4
    max_num_batched_tokens: int = 64
    enable_prefix_caching: bool = True
    max_tokens: int = 16
    # Give request i max(1, max_tokens * (i % 4 + 1) // 4) tokens, so requests finish apart.
    vary_lengths: bool = False
    # Keep generating past EOS, so output lengths (and block usage) are predictable.
    ignore_eos: bool = True
    temperature: float = 0.0
    # Add one new request every `arrival_interval` steps; 0 = all before the first step.
    arrival_interval: int = 0
    seed: int = 0
    # Stage 11: n-gram drafts verified per step (0 = off). Lookup n from 1 to 3, not vLLM's 5:
    # short texts rarely repeat 5 tokens, and the point here is to see drafts at all.
    num_speculative_tokens: int = 0
    prompt_lookup_min: int = 1
    prompt_lookup_max: int = 3

    def engine_kwargs(self) -> dict[str, object]:
        """The subset that configures the engine (everything else shapes the workload)."""
        kwargs: dict[str, object] = dict(
            block_size=self.block_size,
            num_gpu_blocks_override=self.num_blocks,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            enable_prefix_caching=self.enable_prefix_caching,
            seed=self.seed,
        )
        if self.num_speculative_tokens > 0:
            # JSON, like `--speculative-config`: a string keeps the kwargs hashable for the
            # app's LLM cache (st.cache_resource keys on them).
            kwargs["speculative_config"] = json.dumps(
                dict(
                    method="ngram",
                    num_speculative_tokens=self.num_speculative_tokens,
                    prompt_lookup_min=self.prompt_lookup_min,
                    prompt_lookup_max=self.prompt_lookup_max,
                )
            )
        return kwargs

    def max_tokens_for(self, index: int) -> int:
        if not self.vary_lengths:
            return self.max_tokens
        return max(1, self.max_tokens * (index % 4 + 1) // 4)


def build_llm(model: str | None, engine_kwargs: dict[str, object]) -> LLM:
    return LLM(model, disable_log_stats=True, **engine_kwargs)


def record_trace(
    llm: LLM,
    prompts: list[str | dict],
    settings: RunSettings,
    max_steps: int = 5000,
    on_step: Callable[[int, int], None] | None = None,
) -> Trace:
    """Run `prompts` to completion on `llm` and return the recorded trace.

    Request ids are "r0", "r1", ... in prompt order. The prefix cache is reset first, so a
    reused LLM starts every recording from an empty cache. `on_step(steps, finished)` reports
    progress after every step.
    """
    if not prompts:
        raise ValueError("enter at least one prompt")
    engine = llm.llm_engine
    if engine.has_unfinished_requests():
        raise ValueError("the engine still has requests in flight; use a fresh LLM")
    engine.reset_prefix_cache()
    recorder = TraceRecorder(engine)
    recorder.trace.settings = {**asdict(settings), "prompts": [_describe(p) for p in prompts]}
    engine.trace_recorder = recorder
    added: list[str] = []
    try:
        pending = list(enumerate(prompts))
        steps = finished = 0
        while pending or engine.has_unfinished_requests():
            if steps >= max_steps:
                raise RuntimeError(f"the workload did not finish within {max_steps} steps")
            interval = settings.arrival_interval
            while pending and (interval == 0 or steps % interval == 0):
                index, prompt = pending.pop(0)
                params = SamplingParams(
                    max_tokens=settings.max_tokens_for(index),
                    temperature=settings.temperature,
                    ignore_eos=settings.ignore_eos,
                    seed=settings.seed + index if settings.temperature > 0 else None,
                )
                engine.add_request(f"r{index}", prompt, params)
                added.append(f"r{index}")
                if interval:
                    break  # one arrival per tick
            finished += sum(1 for out in engine.step() if out.finished)
            steps += 1
            if on_step is not None:
                on_step(steps, finished)
    finally:
        engine.trace_recorder = None
        # After an error (a prompt too long for the cache...), leave the engine empty for reuse.
        engine.abort_request(added)
    return recorder.trace


def _describe(prompt: str | dict) -> str:
    """A prompt as the trace's JSON keeps it: a dict prompt (stage 10: with multi_modal_data, whose
    images are not JSON) becomes its text and a note of how many images it carried."""
    if isinstance(prompt, str):
        return prompt
    images = (prompt.get("multi_modal_data") or {}).get("image", [])
    count = len(images) if isinstance(images, (list, tuple)) else 1
    return f"{prompt.get('prompt', '')} [+{count} image(s)]" if count else prompt.get("prompt", "")
