"""The messages between scheduler, model runner and engine core.

Stage 5. Mirrors vllm/v1/core/sched/output.py and vllm/v1/outputs.py. The scheduler sends the
runner a SchedulerOutput: full data for requests the runner has never seen (or must rebuild after
preemption), and only deltas (new block ids, computed-token count) for requests it already caches.
The runner answers with a ModelRunnerOutput: the sampled tokens per request. Next: scheduler.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vllm_mini.multimodal.inputs import MultiModalFeatureSpec
from vllm_mini.sampling_params import SamplingParams

if TYPE_CHECKING:
    from vllm_mini.request import Request


@dataclass
class NewRequestData:
    req_id: str
    prompt_token_ids: list[int]
    # Tokens generated before a preemption; they are recomputed like prompt tokens.
    output_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    lora_int_id: int = 0  # the request's LoRA adapter (stage 9); 0: the base model
    mm_features: list[MultiModalFeatureSpec] = field(default_factory=list)  # its images (stage 10)

    @classmethod
    def from_request(cls, request: Request, block_ids: list[int]) -> NewRequestData:
        """Everything the runner needs to (re)build a request it does not hold."""
        return cls(
            req_id=request.request_id,
            prompt_token_ids=request.prompt_token_ids,
            output_token_ids=list(request.output_token_ids),
            sampling_params=request.sampling_params,
            block_ids=block_ids,
            num_computed_tokens=request.num_computed_tokens,
            lora_int_id=request.lora_int_id,
            mm_features=request.mm_features,
        )


@dataclass
class CachedRequestData:
    """Parallel lists, one entry per request the runner already holds."""

    req_ids: list[str] = field(default_factory=list)
    new_block_ids: list[list[int]] = field(default_factory=list)
    num_computed_tokens: list[int] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: CachedRequestData
    # req_id -> tokens to process this step (a prefill chunk or 1 for decode).
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    # Requests that finished or were aborted since the last step: the runner drops their state.
    finished_req_ids: set[str]
    # Requests preempted this step: the runner drops their state too (they come back as new).
    preempted_req_ids: set[str]
    # req_id -> the draft tokens it verifies this step (stage 11); they follow its last token
    # and are counted in num_scheduled_tokens.
    scheduled_spec_decode_tokens: dict[str, list[int]] = field(default_factory=dict)
    # Stage 10: req_id -> indices of its images to encode this step, and the content hashes
    # whose encoder outputs the runner may drop (evicted from the encoder cache).
    scheduled_encoder_inputs: dict[str, list[int]] = field(default_factory=dict)
    free_encoder_mm_hashes: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass
class LogprobsLists:
    """Per row: [sampled token, top-k...] ids, their logprobs, and the sampled token's rank.

    One row per request, or, when requests emit several tokens in a step (speculative
    decoding), one row per emitted token: request i's rows are cu[i]:cu[i + 1] of
    `cu_num_generated_tokens` (vLLM's field of the same name).
    """

    logprob_token_ids: list[list[int]]
    logprobs: list[list[float]]
    sampled_token_ranks: list[int]
    cu_num_generated_tokens: list[int] | None = None

    @classmethod
    def scatter(cls, lists: tuple, rows: list[int], num_reqs: int) -> LogprobsLists:
        """One row per request of the batch: row rows[j] gets sampled row j, the others none."""
        ids, lps, ranks = lists
        out = cls([[] for _ in range(num_reqs)], [[] for _ in range(num_reqs)], [0] * num_reqs)
        for j, i in enumerate(rows):
            out.logprob_token_ids[i] = ids[j]
            out.logprobs[i] = lps[j]
            out.sampled_token_ranks[i] = ranks[j]
        return out


@dataclass
class ModelRunnerOutput:
    req_ids: list[str]
    req_id_to_index: dict[str, int]
    # One list per request: [token] when it sampled, [] when it ran a partial prefill chunk;
    # with speculative decoding, its accepted drafts and then the token it sampled.
    sampled_token_ids: list[list[int]]
    logprobs: LogprobsLists | None = None
    # Per request: draft tokens proposed for its next step (stage 11); None without a proposer.
    spec_token_ids: list[list[int]] | None = None
    # req_id -> logprobs of its prompt tokens 1.. (sent with its first sampled token).
    prompt_logprobs: dict[str, LogprobsLists] | None = None


@dataclass
class EngineCoreOutput:
    """What the engine core reports for one request after a step."""

    request_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    new_logprobs: LogprobsLists | None = None
    num_cached_tokens: int = 0
    prompt_logprobs: LogprobsLists | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class GrammarOutput:
    """The token masks of this step's constrained requests (stage 13; vLLM's GrammarOutput).

    Request structured_output_request_ids[i] owns num_bitmask_rows[i] consecutive rows of
    `grammar_bitmask` (int32 [rows, ceil(vocab / 32)]): one per draft it verifies, plus one for
    the token after them. A numpy array, as in vLLM, so it could cross to worker processes.
    """

    structured_output_request_ids: list[str]
    num_bitmask_rows: list[int]
    grammar_bitmask: np.ndarray
