"""LLMEngine: text in, RequestOutputs out, one `step()` at a time.

Stage 5. Mirrors vllm/v1/engine/llm_engine.py. It wires the front end around EngineCore:
Processor (prompt -> validated EngineCoreRequest), EngineCore (schedule/execute/update),
OutputProcessor (token ids -> text, stop strings, n > 1 gathering) and the stats. The two halves
are separate methods — `make_core_requests` / `process_core_outputs` on the front-end side,
`engine_core` on the other — because AsyncLLM runs them on different threads, the way vLLM runs
them in different processes. `LLM` drives this class to completion; `AsyncLLM` drives it from an
asyncio loop. Next: async_llm.py.
"""

from __future__ import annotations

from vllm_mini.config import VllmConfig
from vllm_mini.core.sched.output import EngineCoreOutput
from vllm_mini.core.sched.scheduler import SchedulerStats
from vllm_mini.engine import EngineCoreRequest
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.core_client import make_engine_core
from vllm_mini.engine.output_processor import OutputProcessor, ParentRequest
from vllm_mini.engine.processor import Processor, PromptType
from vllm_mini.lora.request import LoRARequest
from vllm_mini.metrics.stats import EngineStats, LoggingStatLogger
from vllm_mini.outputs import RequestMetrics, RequestOutput
from vllm_mini.sampling_params import SamplingParams
from vllm_mini.transformers_utils.tokenizer import get_tokenizer


class LLMEngine:
    def __init__(self, vllm_config: VllmConfig, log_stats: bool = True) -> None:
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.tokenizer = get_tokenizer(
            self.model_config.source, trust_remote_code=self.model_config.trust_remote_code
        )
        # One EngineCore, or (stage 8) a client of data_parallel_size replica processes.
        self.engine_core = make_engine_core(vllm_config)
        self.processor = Processor(vllm_config, self.tokenizer, self.engine_core.num_blocks)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.stats = EngineStats()
        self.stat_logger = LoggingStatLogger() if log_stats else None
        # Optional step recorder (engine/trace.py) for the visualizer; None costs nothing.
        self.trace_recorder = None

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> LLMEngine:
        return cls(engine_args.create_engine_config(), log_stats=not engine_args.disable_log_stats)

    def get_tokenizer(self):
        return self.tokenizer

    # ------------------------------------------------------------------ front end: requests in
    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        arrival_time: float | None = None,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> None:
        """Validate and enqueue. Raises ValueError (and enqueues nothing) on bad input."""
        requests = self.make_core_requests(
            request_id, prompt, params, arrival_time, priority, lora_request
        )
        for request in requests:
            self.engine_core.add_request(request)

    def make_core_requests(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        arrival_time: float | None = None,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> list[EngineCoreRequest]:
        """Validate, register the request with the output processor, and return what the core
        must run: one EngineCoreRequest, or one per sample when n > 1 (vLLM's fan-out)."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
        if request_id in self.output_processor.parents:
            raise ValueError(f"request_id {request_id!r} is already in use")
        prompt_text, request = self.processor.process_inputs(
            request_id, prompt, params, arrival_time, priority, lora_request
        )
        params = request.sampling_params
        parent = ParentRequest(
            request_id,
            prompt_text,
            request.prompt_token_ids,
            params.n,
            RequestMetrics(request.arrival_time),
            output_kind=params.output_kind,
        )
        self.stats.num_prompt_tokens += len(request.prompt_token_ids)
        if params.n == 1:
            request.request_id = self._unique_core_id(request_id)
            self.output_processor.add_request(parent, request.request_id, 0, params)
            return [request]
        children = []
        for index in range(params.n):
            # Each sample is its own engine request; they share the prompt's cached blocks.
            child_params = params.clone()
            child_params.n = 1
            if params.seed is not None:
                child_params.seed = params.seed + index
            child = EngineCoreRequest(
                request_id=self._unique_core_id(f"{index}_{request_id}"),
                prompt_token_ids=request.prompt_token_ids,
                sampling_params=child_params,
                eos_token_id=request.eos_token_id,
                arrival_time=request.arrival_time,
                priority=request.priority,
                lora_request=request.lora_request,
                cache_salt=request.cache_salt,
                mm_features=request.mm_features,
            )
            self.output_processor.add_request(parent, child.request_id, index, child_params)
            children.append(child)
        return children

    def _unique_core_id(self, name: str) -> str:
        """The core's request ids are a namespace of their own (vLLM keeps parent and child ids
        apart too): a user's "0_a" and the first child of "a" may both be live. Readable names are
        kept when free; a taken one gets a "#k" suffix."""
        live = self.output_processor.request_states
        if name not in live:
            return name
        k = 1
        while f"{name}#{k}" in live:
            k += 1
        return f"{name}#{k}"

    def abort_request(self, request_ids: str | list[str]) -> None:
        """Abort by the user's request ids (a parent aborts all its samples)."""
        self.engine_core.abort_requests(self.abort_front_end(request_ids))

    def abort_front_end(self, request_ids: str | list[str]) -> list[str]:
        """Forget these requests in the front end; return the core ids the core must abort."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        return self.output_processor.abort_requests(list(request_ids))

    # ---------------------------------------------------------------------------------- steps
    def step(self) -> list[RequestOutput]:
        core_outputs = self.engine_core.step()
        request_outputs, reqs_to_abort = self.process_core_outputs(
            core_outputs, self.engine_core.make_stats()
        )
        if reqs_to_abort:
            self.engine_core.abort_requests(reqs_to_abort)
        if self.trace_recorder is not None:
            finished = [o.request_id for o in core_outputs if o.finished] + reqs_to_abort
            self.trace_recorder.record(finished)
        return request_outputs

    def process_core_outputs(
        self, core_outputs: list[EngineCoreOutput], scheduler_stats: SchedulerStats
    ) -> tuple[list[RequestOutput], list[str]]:
        """Front-end half of a step: detokenize, gather n > 1, count. Returns the outputs and the
        core ids that stop strings ended (the caller aborts them in the core)."""
        self.stats.num_generation_tokens += sum(len(o.new_token_ids) for o in core_outputs)
        request_outputs, reqs_to_abort = self.output_processor.process_outputs(core_outputs)
        for out in request_outputs:
            if out.finished:
                self.stats.record_finished(out)
        self.stats.scheduler = scheduler_stats
        if self.stat_logger is not None:
            self.stat_logger.maybe_log(self.stats)
        return request_outputs, reqs_to_abort

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.output_processor.get_num_unfinished_requests()

    def get_stats(self) -> dict[str, float]:
        self.stats.scheduler = self.engine_core.make_stats()
        return self.stats.as_dict()

    # ------------------------------------------------------------ LoRA (stage 9)
    def add_lora(self, lora_request: LoRARequest) -> None:
        """Check and load an adapter ahead of its first request (vLLM's dynamic loading)."""
        self.processor.check_lora(lora_request)
        self.engine_core.add_lora(lora_request)

    def remove_lora(self, lora_int_id: int) -> bool:
        self.processor.forget_lora(lora_int_id)
        return self.engine_core.remove_lora(lora_int_id)

    def list_loras(self) -> list[LoRARequest]:
        return self.engine_core.list_loras()

    def reset_prefix_cache(self) -> bool:
        return self.engine_core.reset_prefix_cache()

    def shutdown(self) -> None:
        """Stop the engine core's workers (stage 8); safe to call twice."""
        self.engine_core.shutdown()
