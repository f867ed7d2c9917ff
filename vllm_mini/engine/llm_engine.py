"""LLMEngine: text in, RequestOutputs out, one `step()` at a time.

Stage 5. Mirrors vllm/v1/engine/llm_engine.py. It wires the pieces around EngineCore:
Processor (prompt -> validated Request), EngineCore (schedule/execute/update),
OutputProcessor (token ids -> text, stop strings, n > 1 gathering) and the stats. `LLM` drives it
to completion; `AsyncLLM` drives it from an asyncio loop. Next: async_llm.py.
"""

from __future__ import annotations

import time

from vllm_mini.config import VllmConfig
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.core import EngineCore
from vllm_mini.engine.output_processor import OutputProcessor, ParentRequest
from vllm_mini.engine.processor import Processor, PromptType
from vllm_mini.metrics.stats import EngineStats, LoggingStatLogger
from vllm_mini.outputs import RequestMetrics, RequestOutput
from vllm_mini.request import Request
from vllm_mini.sampling_params import SamplingParams
from vllm_mini.transformers_utils.tokenizer import get_tokenizer


class LLMEngine:
    def __init__(self, vllm_config: VllmConfig, log_stats: bool = True) -> None:
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.tokenizer = get_tokenizer(
            self.model_config.source, trust_remote_code=self.model_config.trust_remote_code
        )
        self.engine_core = EngineCore(vllm_config)
        self.processor = Processor(vllm_config, self.tokenizer, self.engine_core.num_blocks)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.stats = EngineStats()
        self.stat_logger = LoggingStatLogger() if log_stats else None
        self.eos_token_id = self.tokenizer.eos_token_id
        # Optional step recorder (engine/trace.py) for the visualizer; None costs nothing.
        self.trace_recorder = None

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> LLMEngine:
        return cls(engine_args.create_engine_config(), log_stats=not engine_args.disable_log_stats)

    def get_tokenizer(self):
        return self.tokenizer

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> None:
        """Validate and enqueue. Raises ValueError (and enqueues nothing) on bad input."""
        if request_id in self.output_processor.parents:
            raise ValueError(f"request_id {request_id!r} is already in use")
        prompt_text, prompt_ids = self.processor.tokenize_prompt(prompt)
        params = self.processor.validate(prompt_ids, params).clone()
        params.update_from_generation_config(self.eos_token_id)
        arrival_time = arrival_time if arrival_time is not None else time.monotonic()
        parent = ParentRequest(
            request_id, prompt_text, prompt_ids, params.n, RequestMetrics(arrival_time)
        )
        self.stats.num_prompt_tokens += len(prompt_ids)
        for index in range(params.n):
            child_params = params
            child_id = request_id
            if params.n > 1:
                # Each sample is its own engine request; they share the prompt's cached blocks.
                child_id = f"{index}_{request_id}"
                child_params = params.clone()
                child_params.n = 1
                if params.seed is not None:
                    child_params.seed = params.seed + index
            self.output_processor.add_request(parent, child_id, index, child_params)
            self.engine_core.add_request(
                Request(
                    child_id,
                    prompt_ids,
                    child_params,
                    self.eos_token_id,
                    arrival_time=arrival_time,
                    priority=priority,
                    block_hasher=self.engine_core.block_hasher,
                )
            )

    def abort_request(self, request_ids: str | list[str]) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        self.engine_core.abort_requests(self.output_processor.abort_requests(request_ids))

    def step(self) -> list[RequestOutput]:
        core_outputs = self.engine_core.step()
        self.stats.num_generation_tokens += sum(len(o.new_token_ids) for o in core_outputs)
        request_outputs, reqs_to_abort = self.output_processor.process_outputs(core_outputs)
        if reqs_to_abort:
            self.engine_core.abort_requests(reqs_to_abort)
        if self.trace_recorder is not None:
            finished = [o.request_id for o in core_outputs if o.finished] + reqs_to_abort
            self.trace_recorder.record(finished)
        for out in request_outputs:
            if out.finished:
                self.stats.record_finished(out)
        self.stats.scheduler = self.engine_core.make_stats()
        if self.stat_logger is not None:
            self.stat_logger.maybe_log(self.stats)
        return request_outputs

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.output_processor.get_num_unfinished_requests()

    def get_stats(self) -> dict[str, float]:
        self.stats.scheduler = self.engine_core.make_stats()
        return self.stats.as_dict()

    def reset_prefix_cache(self) -> bool:
        return self.engine_core.reset_prefix_cache()
