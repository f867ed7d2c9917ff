"""The continuous-batching scheduler: one token budget, spent every step.

Stage 5. Mirrors vllm/v1/core/sched/scheduler.py. There is no separate "prefill phase" and "decode
phase": each request simply has `num_tokens - num_computed_tokens` tokens it still needs to run (a
whole prompt, a chunk of one, or the single token it just sampled). Every step:
  1. running requests, in order, take what they need from the token budget; if the KV cache cannot
     hold a request's new tokens, the LAST running request (lowest priority under the priority
     policy) is preempted — its blocks are freed and it goes back to waiting, to be recomputed;
     if that victim is the request being scheduled, the loop stops for this step;
  2. if nothing was preempted, waiting requests are admitted while budget, sequence slots and
     blocks last; the prefix cache may already hold the start of their prompts;
  3. the step's decisions go to the model runner as a SchedulerOutput.
After the runner returns, `update_from_output` appends sampled tokens and applies stop conditions.

Speculative decoding (stage 11): a request with k drafts schedules 1 + k tokens and gets KV slots
for all of them; when only a are accepted, `num_computed_tokens` steps back by k - a. The stale
KV sits in the request's own slots beyond its computed length, where the next tokens overwrite
it: no block is leaked, and block hashes only cover accepted tokens.

Structured outputs (stage 13): a constrained request waits as WAITING_FOR_FSM until its grammar
compiles; `get_grammar_bitmask` masks its tokens; emitted tokens advance its grammar.
Next: worker/model_runner.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass

from vllm_mini.config import VllmConfig
from vllm_mini.core.encoder_cache_manager import EncoderCacheManager, EncoderSchedule
from vllm_mini.core.kv_cache_manager import KVCacheBlocks, KVCacheManager
from vllm_mini.core.sched.output import (
    CachedRequestData,
    EngineCoreOutput,
    GrammarOutput,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
)
from vllm_mini.core.sched.request_queue import create_request_queue
from vllm_mini.core.sched.utils import check_stop, logprob_rows
from vllm_mini.logger import init_logger
from vllm_mini.request import Request, RequestStatus
from vllm_mini.spec_decode.metrics import SpecDecodingStats
from vllm_mini.structured_output import StructuredOutputManager

logger = init_logger(__name__)


@dataclass
class SchedulerStats:
    num_running_reqs: int
    num_waiting_reqs: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    spec_decoding: SpecDecodingStats | None = None

    @property
    def prefix_cache_hit_rate(self) -> float:
        return (
            self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0
        )


class Scheduler:
    def __init__(
        self,
        vllm_config: VllmConfig,
        num_blocks: int,
        structured_output_manager: StructuredOutputManager | None = None,
    ) -> None:
        sched = vllm_config.scheduler_config
        cache = vllm_config.cache_config
        self.max_num_running_reqs = sched.max_num_seqs
        self.max_num_scheduled_tokens = sched.max_num_batched_tokens
        self.max_model_len = sched.max_model_len
        self.enable_chunked_prefill = sched.enable_chunked_prefill
        self.policy = sched.policy
        self.block_size = cache.block_size
        self.kv_cache_manager = KVCacheManager(
            num_blocks, cache.block_size, self.max_model_len, cache.enable_prefix_caching
        )
        self.requests: dict[str, Request] = {}
        self.waiting = create_request_queue(self.policy)
        self.running: list[Request] = []
        # Finished since the last schedule(): the runner must drop their cached state.
        self.finished_req_ids: set[str] = set()
        self.num_preemptions = 0
        spec = vllm_config.speculative_config
        self.num_spec_tokens = spec.num_speculative_tokens if spec is not None else 0
        # A draft model writes KV for its own drafts at the positions after a request's tokens
        # (spec_decode/draft_model.py): each allocation reserves that many slots beyond them.
        # A step can mix at most max_loras adapters: each needs a slot in every LoRA layer.
        lora = vllm_config.lora_config
        self.max_loras = lora.max_loras if lora is not None else 0
        self.num_lookahead_tokens = (
            self.num_spec_tokens if spec is not None and spec.method == "draft_model" else 0
        )
        # Stage 10: images' encoder outputs, cached by content hash (core/encoder_cache_manager.py).
        self.encoder_budget = EncoderCacheManager.compute_budget(vllm_config)
        self.encoder_cache_manager = EncoderCacheManager(self.encoder_budget)
        # Counters since start-up (the /metrics counters and the benchmark read these).
        self.spec_decoding_stats = SpecDecodingStats(self.num_spec_tokens) if spec else None
        self.structured_output_manager = structured_output_manager or StructuredOutputManager(
            vllm_config
        )
        # Requests that failed before running (a grammar that would not compile): reported by
        # the next update_from_output.
        self._failed_outputs: list[EngineCoreOutput] = []

    # ----------------------------------------------------------------- requests in and out
    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            # Two live requests with one id would share one entry (and one block table).
            raise ValueError(f"request_id {request.request_id!r} is already in the scheduler")
        self.requests[request.request_id] = request
        self.waiting.add_request(request)
        # Compiles on the manager's thread (or hits its cache) while the request waits.
        self.structured_output_manager.grammar_init(request)

    def finish_requests(self, request_ids: Iterable[str], status: RequestStatus) -> None:
        """Abort (or otherwise end) requests in any state; their blocks go back to the pool."""
        for req_id in request_ids:
            request = self.requests.get(req_id)
            if request is None or request.is_finished():
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove_request(request)
            request.status = status
            self._free_request(request)

    def _free_request(self, request: Request) -> None:
        self.kv_cache_manager.free(request)
        self.encoder_cache_manager.free(request)
        self.finished_req_ids.add(request.request_id)
        del self.requests[request.request_id]

    def has_requests(self) -> bool:
        return bool(self.running or self.waiting or self._failed_outputs)

    def get_num_unfinished_requests(self) -> int:
        return len(self.running) + len(self.waiting)

    # ----------------------------------------------------------------------- scheduling
    def schedule(self) -> SchedulerOutput:
        token_budget = self.max_num_scheduled_tokens
        num_scheduled_tokens: dict[str, int] = {}
        new_blocks: dict[str, KVCacheBlocks] = {}
        scheduled_running: list[Request] = []
        scheduled_new: list[Request] = []
        preempted: list[Request] = []
        spec_tokens: dict[str, list[int]] = {}
        step_loras: set[int] = set()  # distinct adapters scheduled this step
        encoder = EncoderSchedule(self.encoder_cache_manager, self.encoder_budget)

        # 1. Running requests first: they already hold KV blocks, finishing them frees memory.
        idx = 0
        while idx < len(self.running) and token_budget > 0:
            request = self.running[idx]
            if not self._lora_fits(request, step_loras):
                idx += 1  # its adapter would need a slot this step does not have: next step
                continue
            # With drafts: the last token plus as many drafts as the budget allows.
            num_new = min(request.num_tokens_with_spec - request.num_computed_tokens, token_budget)
            # An image's tokens run only once its embeddings exist (or fit in this step's budget).
            num_new = encoder.schedule(request, request.num_computed_tokens, num_new)
            if num_new == 0:
                idx += 1
                continue
            blocks = self.kv_cache_manager.allocate_slots(
                request, num_new, num_lookahead_tokens=self.num_lookahead_tokens
            )
            while blocks is None:
                victim = self._pick_victim()
                self._preempt(victim)
                preempted.append(victim)
                if victim in scheduled_running:  # priority policy may evict an earlier pick
                    scheduled_running.remove(victim)
                    token_budget += num_scheduled_tokens.pop(victim.request_id)
                    new_blocks.pop(victim.request_id)
                    spec_tokens.pop(victim.request_id, None)
                    idx -= 1
                if victim is request:
                    break
                blocks = self.kv_cache_manager.allocate_slots(
                    request, num_new, num_lookahead_tokens=self.num_lookahead_tokens
                )
            if blocks is None:
                # `request` itself was the one to go: the cache is full of requests that rank
                # above it, so nothing later in the queue can be scheduled either (vLLM stops
                # its running loop here too).
                break
            scheduled_running.append(request)
            step_loras.add(request.lora_int_id)
            num_scheduled_tokens[request.request_id] = num_new
            new_blocks[request.request_id] = blocks
            token_budget -= num_new
            if request.spec_token_ids:
                # Drafts are used once: verified now (those that fit), or dropped.
                num_spec = num_new + request.num_computed_tokens - request.num_tokens
                if num_spec > 0:
                    spec_tokens[request.request_id] = request.spec_token_ids[:num_spec]
                request.spec_token_ids = []
            idx += 1

        # 2. Admit waiting requests, unless memory was so tight that we just preempted. Those whose
        # adapter would exceed this step's slots wait their turn in `skipped` (vLLM does the same).
        skipped: list[Request] = []
        while (
            not preempted
            and self.waiting
            and token_budget > 0
            and len(self.running) < self.max_num_running_reqs
        ):
            request = self.waiting.peek_request()
            if request.status == RequestStatus.WAITING_FOR_FSM:
                if not self.structured_output_manager.grammar_ready(request):
                    skipped.append(self.waiting.pop_request())  # still compiling: next step
                    continue
                if request.structured_output_request.error is not None:
                    self._fail_request(self.waiting.pop_request())
                    continue
                request.status = RequestStatus.WAITING
            if not self._lora_fits(request, step_loras):
                skipped.append(self.waiting.pop_request())
                continue
            computed_blocks, num_computed = self.kv_cache_manager.get_computed_blocks(request)
            if request.sampling_params.prompt_logprobs is not None:
                # Cached blocks have no logits to give: compute the whole prompt (as vLLM does).
                computed_blocks, num_computed = KVCacheBlocks(), 0
            num_new = request.num_tokens - num_computed
            if num_new > token_budget and not self.enable_chunked_prefill:
                break
            num_new = encoder.schedule(request, num_computed, min(num_new, token_budget))
            if num_new == 0:
                break
            blocks = self.kv_cache_manager.allocate_slots(
                request,
                num_new,
                num_computed,
                computed_blocks,
                num_lookahead_tokens=self.num_lookahead_tokens,
            )
            if blocks is None:
                break
            self.waiting.pop_request()
            self.running.append(request)
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_computed
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_computed
            scheduled_new.append(request)
            step_loras.add(request.lora_int_id)
            num_scheduled_tokens[request.request_id] = num_new
            token_budget -= num_new
        for request in reversed(skipped):
            self.waiting.prepend_request(request)  # back at the front, in their order

        output = SchedulerOutput(
            scheduled_new_reqs=[
                NewRequestData.from_request(r, self.kv_cache_manager.get_block_ids(r.request_id))
                for r in scheduled_new
            ],
            scheduled_cached_reqs=CachedRequestData(
                req_ids=[r.request_id for r in scheduled_running],
                new_block_ids=[new_blocks[r.request_id].get_block_ids() for r in scheduled_running],
                num_computed_tokens=[r.num_computed_tokens for r in scheduled_running],
            ),
            num_scheduled_tokens=num_scheduled_tokens,
            total_num_scheduled_tokens=sum(num_scheduled_tokens.values()),
            finished_req_ids=self.finished_req_ids,
            preempted_req_ids={r.request_id for r in preempted},
            scheduled_spec_decode_tokens=spec_tokens,
            scheduled_encoder_inputs=encoder.commit(self.requests, num_scheduled_tokens),
            free_encoder_mm_hashes=self.encoder_cache_manager.get_freed_mm_hashes(),
        )
        self.finished_req_ids = set()
        # Advance optimistically: the runner will compute exactly these tokens this step.
        for req_id, n in num_scheduled_tokens.items():
            self.requests[req_id].num_computed_tokens += n
        if logger.isEnabledFor(10):
            logger.debug(
                "schedule: %d tokens, new=%s running=%s preempted=%s",
                output.total_num_scheduled_tokens,
                [r.request_id for r in scheduled_new],
                output.scheduled_cached_reqs.req_ids,
                sorted(output.preempted_req_ids),
            )
        return output

    def get_grammar_bitmask(self, so: SchedulerOutput) -> Future | GrammarOutput | None:
        """This step's token masks (stage 13): a Future filled beside the forward pass, or None."""
        return self.structured_output_manager.submit_grammar_bitmask(self.requests, so)

    def _fail_request(self, request: Request) -> None:
        """A request that cannot run: finished as aborted, its error as the stop reason."""
        request.status = RequestStatus.FINISHED_ABORTED
        request.stop_reason = request.structured_output_request.error
        self._failed_outputs.append(
            EngineCoreOutput(request.request_id, [], "abort", request.stop_reason)
        )
        self._free_request(request)

    def _lora_fits(self, request: Request, step_loras: set[int]) -> bool:
        """Base-model requests always fit; an adapter fits if scheduled already or a slot is left."""
        if request.lora_int_id == 0 or request.lora_int_id in step_loras:
            return True
        return len(step_loras - {0}) < self.max_loras

    def _pick_victim(self) -> Request:
        if self.policy == "priority":
            return max(self.running, key=lambda r: (r.priority, r.arrival_time))
        return self.running[-1]  # FCFS: the latest arrival loses

    def _preempt(self, request: Request) -> None:
        """Preemption by recomputation: drop the KV, keep the tokens, run them again later."""
        self.running.remove(request)
        self.kv_cache_manager.free(request)
        self.encoder_cache_manager.free(request)  # outputs stay cached until evicted
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.spec_token_ids = []  # proposed from a state the runner is about to drop
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.prepend_request(request)

    # ------------------------------------------------------------------ after the step
    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput
    ) -> list[EngineCoreOutput]:
        outputs, self._failed_outputs = self._failed_outputs, []
        structured = self.structured_output_manager
        for req_id in scheduler_output.num_scheduled_tokens:
            request = self.requests.get(req_id)
            if request is None or request.status != RequestStatus.RUNNING:
                continue  # aborted or preempted while the step ran
            index = runner_output.req_id_to_index[req_id]
            # Images whose placeholder tokens are all computed no longer need their output.
            self.encoder_cache_manager.free(request, upto=request.num_computed_tokens)
            generated = runner_output.sampled_token_ids[index]
            if not generated:
                continue  # a partial prefill chunk: nothing sampled yet
            drafts = scheduler_output.scheduled_spec_decode_tokens.get(req_id)
            if drafts:
                # len(generated) - 1 drafts were accepted; the rest of the drafts' KV is stale.
                num_accepted = len(generated) - 1
                request.num_computed_tokens -= len(drafts) - num_accepted
                if self.spec_decoding_stats is not None:
                    self.spec_decoding_stats.observe_draft(len(drafts), num_accepted)
            # One token at a time, so a stop condition cuts the step's tokens where it fires.
            new_token_ids: list[int] = []
            stopped = False
            for token in generated:
                request.append_output_token_ids(token)
                new_token_ids.append(token)
                stopped = check_stop(request, self.max_model_len)
                if stopped:
                    break
            if request.structured_output_request is not None:
                structured.accept_tokens(request, new_token_ids)
            if not stopped and runner_output.spec_token_ids is not None:
                request.spec_token_ids = runner_output.spec_token_ids[index]
                if request.structured_output_request is not None:
                    request.spec_token_ids = structured.validate_tokens(
                        request, request.spec_token_ids
                    )
            outputs.append(
                EngineCoreOutput(
                    request_id=req_id,
                    new_token_ids=new_token_ids,
                    finish_reason=request.get_finished_reason() if stopped else None,
                    stop_reason=request.stop_reason,
                    new_logprobs=logprob_rows(runner_output.logprobs, index, len(new_token_ids)),
                    num_cached_tokens=request.num_cached_tokens,
                    prompt_logprobs=(runner_output.prompt_logprobs or {}).get(req_id),
                )
            )
            if stopped:
                self.running.remove(request)
                self._free_request(request)
        return outputs

    def make_stats(self) -> SchedulerStats:
        kv = self.kv_cache_manager
        return SchedulerStats(
            num_running_reqs=len(self.running),
            num_waiting_reqs=len(self.waiting),
            kv_cache_usage=kv.usage,
            prefix_cache_queries=kv.prefix_cache_stats.queries,
            prefix_cache_hits=kv.prefix_cache_stats.hits,
            num_preemptions=self.num_preemptions,
            spec_decoding=self.spec_decoding_stats,
        )
