"""Beam search on top of the engine: `LLM.beam_search`, as vLLM's offline beam search.

Mirrors vllm/entrypoints/generate/beam_search/offline.py and utils.py. vLLM v1 has no beam
search inside the scheduler: beams are ordinary requests. Each round, every live beam (prompt +
its tokens so far) runs one step with logprobs = 2 * beam_width; every (beam, candidate token)
pair becomes a new candidate beam scored by its cumulative logprob, and the best beam_width
survive. Beams that share a prefix share its KV blocks through the prefix cache, so a round costs
about one decode step per beam, not a prefill. A beam ends at EOS (unless ignore_eos) or at
max_tokens; finished beams are ranked by cumulative logprob / length ** length_penalty, the
length normalization HF `generate(num_beams=...)` also uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_mini.sampling_params import SamplingParams


@dataclass
class BeamSearchParams:
    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        for name in ("beam_width", "max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.temperature != 0.0:
            raise ValueError("beam search is deterministic here: temperature must be 0")


@dataclass
class BeamSearchSequence:
    tokens: list[int]  # prompt + generated
    num_prompt_tokens: int
    cum_logprob: float = 0.0
    finished: bool = False
    text: str = ""

    @property
    def output_token_ids(self) -> list[int]:
        return self.tokens[self.num_prompt_tokens :]

    def score(self, length_penalty: float) -> float:
        return self.cum_logprob / max(1, len(self.output_token_ids)) ** length_penalty


@dataclass
class BeamSearchOutput:
    sequences: list[BeamSearchSequence] = field(default_factory=list)  # best first


def beam_search(llm, prompts: list[list[int]], params: BeamSearchParams) -> list[BeamSearchOutput]:
    """Best-first beams for each prompt (token ids), through `llm.generate`."""
    engine = llm.llm_engine
    eos = engine.processor.eos_token_id
    width = params.beam_width
    num_logprobs = 2 * width  # enough candidates even if half of them end at EOS
    if num_logprobs > engine.vllm_config.model_config.max_logprobs:
        raise ValueError(
            f"beam_width={width} needs {num_logprobs} logprobs per step, above max_logprobs="
            f"{engine.vllm_config.model_config.max_logprobs}"
        )
    step = SamplingParams(temperature=0.0, max_tokens=1, logprobs=num_logprobs, ignore_eos=True)
    outputs = []
    for prompt in prompts:
        beams = [BeamSearchSequence(list(prompt), len(prompt))]
        done: list[BeamSearchSequence] = []
        for _ in range(params.max_tokens):
            live = [b for b in beams if not b.finished]
            if not live:
                break
            results = llm.generate(
                [{"prompt_token_ids": b.tokens} for b in live], step, use_tqdm=False
            )
            candidates = []
            for beam, result in zip(live, results):
                for token, logprob in result.outputs[0].logprobs[0].items():
                    new = BeamSearchSequence(
                        beam.tokens + [token], beam.num_prompt_tokens,
                        beam.cum_logprob + logprob.logprob,
                    )  # fmt: skip
                    new.finished = token == eos and not params.ignore_eos
                    candidates.append(new)
            candidates.sort(key=lambda b: b.cum_logprob, reverse=True)
            beams = []
            for c in candidates:  # the best `width` that go on; finished ones are set aside
                if c.finished:
                    done.append(c)
                elif len(beams) < width:
                    beams.append(c)
                if len(beams) == width:
                    break
        done += [b for b in beams if not b.finished]
        done.sort(key=lambda b: b.score(params.length_penalty), reverse=True)
        best = done[:width]
        tokenizer = llm.get_tokenizer()
        for b in best:
            b.text = tokenizer.decode(b.output_token_ids, skip_special_tokens=True)
        outputs.append(BeamSearchOutput(best))
    return outputs
