"""StructuredOutputManager: compile constraints off the loop, fill token masks every step.

Stage 13. Mirrors vllm/v1/structured_output/__init__.py. The engine core owns one manager:
  - `grammar_init` (when a constrained request arrives): look the constraint up in a cache of
    compiled grammars, or start compiling it on a background thread;
  - `grammar_ready` (the scheduler, before admitting it): has the compile finished? then give
    the request its own grammar cursor;
  - `grammar_bitmask` (every step, after scheduling): one mask row per position that samples,
    walking the grammar through any speculative drafts and back;
  - `accept_tokens` / `validate_tokens` (after the step): advance by the emitted tokens, and cut
    the next drafts at the first token the grammar forbids.
The bitmask is filled on a helper thread while the forward pass runs (`submit_grammar_bitmask`),
as vLLM's EngineCore does beside its model executor: the runner waits for it only to sample.
Next: backend_types.py.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vllm_mini.config import VllmConfig
from vllm_mini.core.sched.output import GrammarOutput, SchedulerOutput
from vllm_mini.logger import init_logger
from vllm_mini.sampling_params import StructuredOutputsParams
from vllm_mini.structured_output.backend_types import StructuredOutputBackend, StructuredOutputKey
from vllm_mini.structured_output.utils import get_structured_output_key

if TYPE_CHECKING:
    from vllm_mini.request import Request

logger = init_logger(__name__)


def validate_structured_output_params(params: StructuredOutputsParams, backend: str) -> None:
    """The front end's check (engine/processor.py): a constraint the backend cannot parse is the
    caller's error, raised before the request is queued (parsing is fast; compiling is not)."""
    if backend == "guidance":
        from vllm_mini.structured_output.backend_guidance import validate_guidance_params

        validate_guidance_params(params)
    else:
        from vllm_mini.structured_output.backend_xgrammar import validate_xgrammar_params

        validate_xgrammar_params(params)


# Compiled grammars kept for reuse (a server sees the same few schemas over and over).
MAX_CACHED_GRAMMARS = 256


@dataclass
class StructuredOutputStats:
    num_compiles: int = 0  # cache misses: grammars compiled
    num_cache_hits: int = 0
    compile_seconds: float = 0.0  # summed over compiles, on the compile thread


class StructuredOutputManager:
    def __init__(self, vllm_config: VllmConfig) -> None:
        self.vllm_config = vllm_config
        self.config = vllm_config.structured_outputs_config
        self.backend: StructuredOutputBackend | None = None  # built on the first constraint
        self._compiled: OrderedDict[StructuredOutputKey, Future] = OrderedDict()
        self._compile_pool: ThreadPoolExecutor | None = None
        self._fill_pool: ThreadPoolExecutor | None = None
        self._bitmask: torch.Tensor | None = None
        self.stats = StructuredOutputStats()
        # False: fill masks on the engine thread before the forward pass (the benchmark compares).
        self.overlap_with_forward = True

    # --------------------------------------------------------------------- compiling
    def _make_backend(self) -> StructuredOutputBackend:
        from vllm_mini.transformers_utils.tokenizer import get_tokenizer

        model = self.vllm_config.model_config
        tokenizer = get_tokenizer(model.source, trust_remote_code=model.trust_remote_code)
        args = (tokenizer, model.vocab_size, tokenizer.eos_token_id)
        if self.config.resolved_backend == "guidance":
            from vllm_mini.structured_output.backend_guidance import GuidanceBackend

            return GuidanceBackend(*args)
        from vllm_mini.structured_output.backend_xgrammar import XgrammarBackend

        return XgrammarBackend(*args)

    def grammar_init(self, request: Request) -> None:
        so_request = request.structured_output_request
        if so_request is None:
            return
        if self.backend is None:
            self.backend = self._make_backend()
            self._compile_pool = ThreadPoolExecutor(1, thread_name_prefix="grammar-compile")
        key = get_structured_output_key(
            so_request.params,
            self.config.disable_any_whitespace,
            self.config.disable_additional_properties,
        )
        so_request.key = key
        future = self._compiled.get(key)
        if future is not None and not (future.done() and future.exception() is not None):
            self._compiled.move_to_end(key)
            self.stats.num_cache_hits += 1
        else:
            future = self._compile_pool.submit(self._compile, key)
            self._compiled[key] = future
            if len(self._compiled) > MAX_CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        so_request.compiled = future

    def _compile(self, key: StructuredOutputKey) -> object:
        start = time.perf_counter()
        compiled = self.backend.compile(key)
        self.stats.num_compiles += 1
        self.stats.compile_seconds += time.perf_counter() - start
        return compiled

    def grammar_ready(self, request: Request) -> bool:
        """True once the request has its grammar (or failed: see its `error`)."""
        so_request = request.structured_output_request
        if so_request.grammar is not None or so_request.error is not None:
            return True
        if not so_request.compiled.done():
            return False
        try:
            compiled = so_request.compiled.result()
        except Exception as e:  # the front end validated it; a backend can still refuse
            so_request.error = f"structured_outputs.{so_request.params.kind}: {e}"
            logger.error("request %s: %s", request.request_id, so_request.error)
            return True
        so_request.grammar = self.backend.new_grammar(compiled)
        return True

    # ---------------------------------------------------------------------- masking
    def submit_grammar_bitmask(
        self, requests: dict[str, Request], so: SchedulerOutput
    ) -> Future | GrammarOutput | None:
        """The step's masks, filled on the helper thread (a Future) or now; None: no constraint."""
        if self.backend is None:  # no constrained request has ever arrived: skip the scan
            return None
        ids = [
            req_id
            for req_id in so.num_scheduled_tokens
            if requests[req_id].structured_output_request is not None
            # only requests that sample this step: a partial prefill chunk needs no mask
            and requests[req_id].num_computed_tokens >= requests[req_id].num_tokens
        ]
        if not ids:
            return None
        drafts = so.scheduled_spec_decode_tokens
        if not self.overlap_with_forward:
            return self.grammar_bitmask(requests, ids, drafts)
        if self._fill_pool is None:
            self._fill_pool = ThreadPoolExecutor(1, thread_name_prefix="grammar-bitmask")
        return self._fill_pool.submit(self.grammar_bitmask, requests, ids, drafts)

    def grammar_bitmask(
        self,
        requests: dict[str, Request],
        request_ids: list[str],
        scheduled_spec_decode_tokens: dict[str, list[int]],
    ) -> GrammarOutput:
        """Row per sampled position: a request verifying k drafts gets k + 1 rows."""
        rows_needed = sum(1 + len(scheduled_spec_decode_tokens.get(r, ())) for r in request_ids)
        if self._bitmask is None or self._bitmask.shape[0] < rows_needed:
            self._bitmask = self.backend.allocate_token_bitmask(max(rows_needed, 16))
        bitmask = self._bitmask
        row = 0
        counts = []
        for req_id in request_ids:
            grammar = requests[req_id].structured_output_request.grammar
            drafts = scheduled_spec_decode_tokens.get(req_id, [])
            advanced, failed = 0, False
            for token in drafts:
                if failed:
                    bitmask[row] = -1  # past a draft the grammar refused: rejected anyway
                else:
                    self._fill_row(grammar, bitmask, row)
                    # Walk through the draft so the next row masks the position after it.
                    if not grammar.is_terminated() and grammar.accept_tokens(req_id, [token]):
                        advanced += 1
                    else:
                        failed = True
                row += 1
            if failed:
                bitmask[row] = -1
            else:
                self._fill_row(grammar, bitmask, row)
            row += 1
            if advanced:
                grammar.rollback(advanced)
            counts.append(1 + len(drafts))
        return GrammarOutput(request_ids, counts, bitmask[:row].numpy().copy())

    @staticmethod
    def _fill_row(grammar, bitmask: torch.Tensor, row: int) -> None:
        if grammar.is_terminated():
            bitmask[row] = -1  # the structure is complete: no constraint (as vLLM)
        else:
            grammar.fill_bitmask(bitmask, row)

    # ------------------------------------------------------------------ after a step
    def accept_tokens(self, request: Request, token_ids: Iterable[int]) -> None:
        grammar = request.structured_output_request.grammar
        for token in token_ids:
            if grammar.is_terminated():
                return  # e.g. ignore_eos: tokens after the end are not the grammar's business
            if not grammar.accept_tokens(request.request_id, [token]):
                logger.error(
                    "request %s: token %d is not allowed by its grammar", request.request_id, token
                )
                return

    def validate_tokens(self, request: Request, draft_token_ids: list[int]) -> list[int]:
        """The drafts up to the first one the grammar forbids (verifying the rest is waste)."""
        grammar = request.structured_output_request.grammar
        if grammar is None or grammar.is_terminated():
            return draft_token_ids
        return grammar.validate_tokens(draft_token_ids)
