"""The model runner's prompt logprobs: every prompt token scored, chunk by chunk.

Mirrors the prompt-logprobs parts of vllm/v1/worker/gpu_model_runner.py. A mixin of ModelRunner.
Position p's logits score prompt token p + 1, so each prefill chunk adds the rows it predicts;
the whole list goes out with the request's first sampled token. Only requests that asked are
visited (`prompt_logprob_reqs`), so the step of everyone else pays nothing.
"""

from __future__ import annotations

import torch

from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.core.sched.output import LogprobsLists
from vllm_mini.model_executor.layers.sampler import Sampler


class PromptLogprobsMixin:
    def _gather_prompt_logprobs(
        self, hidden_states: torch.Tensor, meta: AttentionMetadata, req_ids: list[str]
    ) -> None:
        """For requests that asked: the logprob of every prompt token this step's positions
        predict (position p's logits score token p + 1), with its rank and the top-k."""
        if not self.prompt_logprob_reqs:
            return
        for i, req_id in enumerate(req_ids):
            if req_id not in self.prompt_logprob_reqs:
                continue
            state = self.requests[req_id]
            lo, hi = meta.query_start_loc_cpu[i], meta.query_start_loc_cpu[i + 1]
            start = meta.seq_lens_cpu[i] - (hi - lo)  # the position of row lo
            end = min(start + hi - lo, len(state.prompt_token_ids) - 1)
            if end <= start:
                continue
            logits = self.model.compute_logits(hidden_states[lo : lo + end - start])
            logprobs = logits.float().log_softmax(dim=-1)
            targets = torch.tensor(state.prompt_token_ids[start + 1 : end + 1], device=self.device)
            k = state.sampling_params.prompt_logprobs
            ids, lps, ranks = Sampler._gather_logprobs(logprobs, targets, k).tolists()
            for acc, rows in zip(state.prompt_logprobs, (ids, lps, ranks)):
                acc.extend(rows)

    def _finished_prompt_logprobs(
        self, req_ids: list[str], rows: list[int]
    ) -> dict[str, LogprobsLists] | None:
        """Sent with a request's first sampled token, once its whole prompt has been scored."""
        if not self.prompt_logprob_reqs:
            return None
        out = {}
        for i in rows:
            state = self.requests[req_ids[i]]
            if state.req_id in self.prompt_logprob_reqs:
                out[state.req_id] = LogprobsLists(*state.prompt_logprobs)
                state.prompt_logprobs = None
                self.prompt_logprob_reqs.discard(state.req_id)
        return out or None
