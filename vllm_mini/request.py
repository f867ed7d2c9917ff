"""Request: one prompt's journey through the engine, and its status state machine.

Stage 5. Mirrors vllm/v1/request.py. The scheduler moves a request WAITING -> RUNNING ->
(PREEMPTED -> WAITING ->)* FINISHED_*; the KV cache manager reads its token ids and block
hashes. A constrained request (stage 13) starts in WAITING_FOR_FSM until its grammar is compiled.
Next: core/sched/scheduler.py.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vllm_mini.structured_output.request import StructuredOutputRequest

if TYPE_CHECKING:
    from vllm_mini.engine import EngineCoreRequest
    from vllm_mini.multimodal.inputs import MultiModalFeatureSpec
    from vllm_mini.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    """Status of a request. Everything above PREEMPTED is a finished state."""

    WAITING = enum.auto()
    WAITING_FOR_FSM = enum.auto()  # its grammar is still compiling (stage 13)
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @staticmethod
    def is_finished(status: RequestStatus) -> bool:
        return status > RequestStatus.PREEMPTED

    @staticmethod
    def get_finished_reason(status: RequestStatus) -> str | None:
        return _FINISHED_REASONS.get(status)


# The OpenAI-style strings that end up in CompletionOutput.finish_reason.
_FINISHED_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class Request:
    """The engine-side state of one sequence (one child when n > 1).

    `num_computed_tokens` counts tokens whose KV is in the cache; the scheduler advances it,
    so `num_tokens - num_computed_tokens` is what still needs a forward pass.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        eos_token_id: int | None,
        arrival_time: float | None = None,
        priority: int = 0,
        block_hasher: Callable[[Request], list[Any]] | None = None,
        lora_int_id: int = 0,
        cache_salt: str | None = None,
        mm_features: list[MultiModalFeatureSpec] | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_id = eos_token_id
        self.arrival_time = arrival_time if arrival_time is not None else time.monotonic()
        self.priority = priority
        self.lora_int_id = lora_int_id
        self.cache_salt = cache_salt
        # The prompt's images, in prompt order (stage 10); their hashes join the block hashes.
        self.mm_features = list(mm_features or [])
        self.status = RequestStatus.WAITING
        # Stage 13: the request's output constraint and, once compiled, its grammar cursor.
        self.structured_output_request = (
            StructuredOutputRequest(sampling_params.structured_outputs)
            if sampling_params.structured_outputs is not None
            else None
        )
        if self.structured_output_request is not None:
            self.status = RequestStatus.WAITING_FOR_FSM
        self.stop_reason: int | str | None = None

        self.num_prompt_tokens = len(self.prompt_token_ids)
        self._output_token_ids: list[int] = []
        self._all_token_ids: list[int] = list(self.prompt_token_ids)
        self.num_computed_tokens = 0
        # Tokens found in the prefix cache when first scheduled (-1 = not scheduled yet).
        self.num_cached_tokens = -1
        self.num_preemptions = 0
        # Draft tokens proposed for the next step (stage 11): not part of the request's tokens
        # until the target accepts them, so they never enter the block hashes.
        self.spec_token_ids: list[int] = []

        # Hashes of this request's *full* blocks, extended as tokens arrive (prefix caching).
        self.block_hashes: list[Any] = []
        self._block_hasher = block_hasher
        if block_hasher is not None:
            self.block_hashes.extend(block_hasher(self))

    @classmethod
    def from_engine_core_request(
        cls,
        request: EngineCoreRequest,
        block_hasher: Callable[[Request], list[Any]] | None,
    ) -> Request:
        """The core's side of the boundary: a validated front-end message becomes a Request."""
        return cls(
            request.request_id,
            request.prompt_token_ids,
            request.sampling_params,
            request.eos_token_id,
            arrival_time=request.arrival_time,
            priority=request.priority,
            block_hasher=block_hasher,
            lora_int_id=request.lora_request.lora_int_id if request.lora_request else 0,
            cache_salt=request.cache_salt,
            mm_features=request.mm_features,
        )

    @property
    def output_token_ids(self) -> list[int]:
        return self._output_token_ids

    @property
    def all_token_ids(self) -> list[int]:
        return self._all_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self._all_token_ids)

    @property
    def num_tokens_with_spec(self) -> int:
        return len(self._all_token_ids) + len(self.spec_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self._output_token_ids)

    @property
    def max_tokens(self) -> int:
        return self.sampling_params.max_tokens

    def append_output_token_ids(self, token_ids: int | list[int]) -> None:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        self._output_token_ids.extend(token_ids)
        self._all_token_ids.extend(token_ids)
        if self._block_hasher is not None:
            self.block_hashes.extend(self._block_hasher(self))

    def is_finished(self) -> bool:
        return RequestStatus.is_finished(self.status)

    def get_finished_reason(self) -> str | None:
        return RequestStatus.get_finished_reason(self.status)
