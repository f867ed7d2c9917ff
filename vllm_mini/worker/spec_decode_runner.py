"""The model runner's speculative-decoding half: verify this step's drafts, propose the next.

Stage 11. Mirrors the spec-decode parts of vllm/v1/worker/gpu_model_runner.py (rejection
sampling of the verified positions, `propose_draft_token_ids`). A mixin of ModelRunner (kept
apart so model_runner.py reads as the plain step). Both proposers (spec_decode/) share one
interface: load_model, initialize_kv_cache, kv_bytes_per_block, remove_requests,
take_draft_probs and propose_batch, so the runner never asks which one it holds.
Next: spec_decode/ngram_proposer.py and spec_decode/draft_model.py.
"""

from __future__ import annotations

from concurrent.futures import Future

import torch

from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.config import VllmConfig
from vllm_mini.core.sched.output import GrammarOutput, LogprobsLists
from vllm_mini.spec_decode.draft_model import DraftModelProposer
from vllm_mini.spec_decode.ngram_proposer import NgramProposer
from vllm_mini.structured_output.utils import apply_grammar_bitmask


def make_drafter(vllm_config: VllmConfig) -> NgramProposer | DraftModelProposer | None:
    spec = vllm_config.speculative_config
    if spec is None:
        return None
    if spec.method == "ngram":
        return NgramProposer(
            spec.prompt_lookup_min,
            spec.prompt_lookup_max,
            spec.num_speculative_tokens,
            vllm_config.model_config.max_model_len,
        )
    return DraftModelProposer(vllm_config)


class SpecDecodeMixin:
    def _verify_drafts(
        self,
        hidden_states: torch.Tensor,
        meta: AttentionMetadata,
        req_ids: list[str],
        rows: list[int],
        spec: dict[str, list[int]],
        grammar_output: Future | GrammarOutput | None = None,
    ) -> tuple[list[list[int]], LogprobsLists | None]:
        """Logits at each sampling request's last 1 + k positions, through the rejection sampler."""
        batch = self.input_batch
        drafts = [spec.get(req_ids[i], []) for i in rows]
        positions = []
        for i, d in zip(rows, drafts):
            end = meta.query_start_loc_cpu[i + 1]
            positions.extend(range(end - 1 - len(d), end))
        logits = self.model.compute_logits(
            hidden_states[torch.tensor(positions, device=self.device)]
        ).float()
        if grammar_output is not None:  # stage 13: a mask per verified position
            logits_rows, first = {}, 0
            for i, d in zip(rows, drafts):
                logits_rows[req_ids[i]] = (first, 1 + len(d))
                first += 1 + len(d)
            apply_grammar_bitmask(logits, logits_rows, grammar_output)
        metadata = batch.sampling_metadata(None if len(rows) == len(req_ids) else rows)
        # A draft model's sampled drafts come with their q; n-gram drafts with None (one-hot).
        draft_probs = [
            self.drafter.take_draft_probs(req_ids[i], len(d)) for i, d in zip(rows, drafts)
        ]
        out = self.rejection_sampler(logits, drafts, metadata, draft_probs)
        sampled: list[list[int]] = [[] for _ in req_ids]
        for row, tokens in zip(rows, out.token_ids):
            for token in tokens:
                batch.append_token(row, token)
            sampled[row] = tokens
        logprobs = None
        if out.logprobs_tensors is not None:
            ids, lps, ranks = out.logprobs_tensors.tolists()
            cu = [0]
            for tokens in sampled:
                cu.append(cu[-1] + len(tokens))
            logprobs = LogprobsLists(ids, lps, ranks, cu_num_generated_tokens=cu)
        return sampled, logprobs

    def _propose_drafts(self, rows: list[int], num_reqs: int) -> list[list[int]]:
        """Next step's drafts for every request that just sampled (the others get none)."""
        batch = self.input_batch
        drafts: list[list[int]] = [[] for _ in range(num_reqs)]
        limit = self.vllm_config.speculative_config.disable_by_batch_size
        if limit is not None and num_reqs >= limit:
            return drafts
        rooms = []
        for i in rows:
            params = self.requests[batch.req_ids[i]].sampling_params
            # The step after next emits at most drafts + 1 tokens: never more than max_tokens,
            # and the drafts' positions must stay below max_model_len.
            rooms.append(
                min(
                    params.max_tokens - len(batch.output_token_ids[i]) - 1,
                    self.model_config.max_model_len - int(batch.num_tokens_np[i]),
                )
            )
        for i, d in zip(rows, self.drafter.propose_batch(batch, rows, rooms)):
            drafts[i] = d
        return drafts
