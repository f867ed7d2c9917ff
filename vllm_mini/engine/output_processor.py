"""OutputProcessor: engine-core token ids -> RequestOutputs with text, logprobs and timings.

Stage 5. Mirrors vllm/v1/engine/output_processor.py. One RequestState per request detokenizes
incrementally and applies stop strings; when a stop string ends a request, the engine core did not
know (it only sees token ids), so the request id is returned in `reqs_to_abort` and the engine
aborts it there. With n > 1 the parent gathers its children's CompletionOutputs into one
RequestOutput (vLLM's ParentRequest).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from vllm_mini.core.sched.output import EngineCoreOutput
from vllm_mini.engine.detokenizer import IncrementalDetokenizer
from vllm_mini.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from vllm_mini.sampling_params import RequestOutputKind, SamplingParams


@dataclass
class ParentRequest:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    n: int
    metrics: RequestMetrics
    children: dict[str, CompletionOutput] = field(default_factory=dict)
    num_cached_tokens: int = 0
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    prompt_logprobs: list | None = None
    # DELTA outputs carry only the children that produced something this step.
    changed: set[str] = field(default_factory=set)

    def to_output(self, delta: bool = False) -> RequestOutput:
        every = sorted(self.children.values(), key=lambda c: c.index)
        finished = len(every) == self.n and all(c.finished() for c in every)
        outs = [self.children[c] for c in sorted(self.changed)] if delta else every
        outs.sort(key=lambda c: c.index)
        self.changed = set()
        return RequestOutput(
            self.request_id,
            self.prompt,
            self.prompt_token_ids,
            outs,
            finished,
            self.metrics,
            self.num_cached_tokens,
            prompt_logprobs=self.prompt_logprobs,
        )


@dataclass
class RequestState:
    child_id: str
    index: int
    parent: ParentRequest
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float | None
    # What DELTA outputs have already sent.
    sent_tokens: int = 0
    sent_chars: int = 0


class OutputProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.request_states: dict[str, RequestState] = {}
        self.parents: dict[str, ParentRequest] = {}

    def add_request(
        self,
        parent: ParentRequest,
        child_id: str,
        index: int,
        params: SamplingParams,
    ) -> None:
        self.parents[parent.request_id] = parent
        want_logprobs = params.logprobs is not None
        self.request_states[child_id] = RequestState(
            child_id,
            index,
            parent,
            params,
            IncrementalDetokenizer(self.tokenizer, params),
            [] if want_logprobs else None,
            0.0 if want_logprobs else None,
        )
        parent.children[child_id] = CompletionOutput(index, "", [], None, None)

    def detokenizers(self) -> dict[str, IncrementalDetokenizer]:
        """The live detokenizer of every unfinished child request (read by the trace recorder)."""
        return {cid: state.detokenizer for cid, state in self.request_states.items()}

    def has_unfinished_requests(self) -> bool:
        return bool(self.request_states)

    def get_num_unfinished_requests(self) -> int:
        return len(self.parents)

    def child_ids(self, parent_id: str) -> list[str]:
        parent = self.parents.get(parent_id)
        return list(parent.children) if parent else []

    def abort_requests(self, parent_ids: list[str]) -> list[str]:
        """Forget these parents; return their children's ids for the engine core to abort."""
        child_ids: list[str] = []
        for pid in parent_ids:
            parent = self.parents.pop(pid, None)
            if parent is None:
                continue
            for cid in parent.children:
                if self.request_states.pop(cid, None) is not None:
                    child_ids.append(cid)
        return child_ids

    def process_outputs(
        self, outputs: list[EngineCoreOutput]
    ) -> tuple[list[RequestOutput], list[str]]:
        now = time.monotonic()
        touched: dict[str, ParentRequest] = {}
        reqs_to_abort: list[str] = []
        for out in outputs:
            state = self.request_states.get(out.request_id)
            if state is None:
                continue  # aborted by the user while the step ran
            parent = state.parent
            metrics = parent.metrics
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
            parent.num_cached_tokens = out.num_cached_tokens
            finish_reason, stop_reason = out.finish_reason, out.stop_reason
            stop_str = state.detokenizer.update(out.new_token_ids, finish_reason == "stop")
            if stop_str is not None:
                # A stop string wins over "length" even on the last allowed token: the text did
                # stop there. Only a request the core still runs needs aborting.
                if finish_reason is None:
                    reqs_to_abort.append(out.request_id)
                finish_reason, stop_reason = "stop", stop_str
            self._update_logprobs(state, out)
            if out.prompt_logprobs is not None and parent.prompt_logprobs is None:
                parent.prompt_logprobs = self._prompt_logprobs(out.prompt_logprobs, state)
            det = state.detokenizer
            text, token_ids, logprobs = det.output_text, list(det.token_ids), state.logprobs
            if state.params.output_kind == RequestOutputKind.DELTA:
                end = len(text)
                if finish_reason is None and det.max_stop_len > 1:
                    # Hold back what could still turn out to start a stop string (it would be
                    # cut from the text, and a sent delta cannot be taken back).
                    end = max(state.sent_chars, end - det.max_stop_len + 1)
                text, token_ids = text[state.sent_chars : end], token_ids[state.sent_tokens :]
                logprobs = None if logprobs is None else logprobs[state.sent_tokens :]
                state.sent_chars, state.sent_tokens = end, len(det.token_ids)
            parent.children[state.child_id] = CompletionOutput(
                index=state.index,
                text=text,
                token_ids=token_ids,
                cumulative_logprob=state.cumulative_logprob,
                logprobs=logprobs,
                finish_reason=finish_reason,
                stop_reason=stop_reason,
            )
            parent.changed.add(state.child_id)
            if finish_reason is not None:
                del self.request_states[state.child_id]
            touched[parent.request_id] = parent

        results = []
        for parent in touched.values():
            kind = parent.output_kind
            request_output = parent.to_output(delta=kind == RequestOutputKind.DELTA)
            if request_output.finished:
                parent.metrics.finished_time = now
                self.parents.pop(parent.request_id, None)
            if kind != RequestOutputKind.FINAL_ONLY or request_output.finished:
                results.append(request_output)
        return results, reqs_to_abort

    def _prompt_logprobs(self, lp, state: RequestState) -> list:
        """vLLM's format: None for the first prompt token, then {token id: Logprob} per token."""
        width = state.params.prompt_logprobs + 1
        entries: list = [None]
        for ids, values, rank in zip(lp.logprob_token_ids, lp.logprobs, lp.sampled_token_ranks):
            entry = {}
            for col, (tok, value) in enumerate(zip(ids[:width], values[:width])):
                if tok not in entry:
                    entry[tok] = Logprob(
                        value, rank if col == 0 else col, self.tokenizer.decode([tok])
                    )
            entries.append(entry)
        return entries

    def _update_logprobs(self, state: RequestState, out: EngineCoreOutput) -> None:
        if state.logprobs is None or out.new_logprobs is None:
            return
        lp = out.new_logprobs
        # The sampler computes top-k once for the whole batch, with the largest k any request in
        # it asked for; each request keeps its own k (+ column 0, the sampled token).
        width = state.params.logprobs + 1
        for ids, values, rank in zip(lp.logprob_token_ids, lp.logprobs, lp.sampled_token_ranks):
            entry: dict[int, Logprob] = {}
            # Column 0 is the sampled token; the rest are the top-k, ranked 1..k.
            for col, (tok, value) in enumerate(zip(ids[:width], values[:width])):
                if tok in entry:
                    continue
                entry[tok] = Logprob(value, rank if col == 0 else col, self.tokenizer.decode([tok]))
            state.logprobs.append(entry)
            state.cumulative_logprob += values[0]
