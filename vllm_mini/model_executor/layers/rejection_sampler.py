"""Rejection sampler: verify a request's draft tokens with one forward pass of the target.

Stage 11. Mirrors vllm/v1/sample/rejection_sampler.py; the rule is from Leviathan et al. 2023
("Fast Inference from Transformers via Speculative Decoding", section 2.3) and Chen et al. 2023.
A request that scheduled drafts d_1..d_s ran s + 1 query positions: its last real token, then
the drafts. Position j's logits are the target's distribution p_j for the token after d_j
(p_0: after the real token). Walk the drafts in order:
- greedy: accept d_j while it equals argmax p_{j-1}; at the first mismatch emit the argmax
  instead and stop. The output is exactly what s + 1 ordinary greedy steps would produce.
- random: accept d_j with probability min(1, p(d_j) / q(d_j)), q being the draft's
  distribution (n-gram drafts are certain, so q is one-hot and the test is u < p(d_j)). On the
  first rejection, sample from the residual max(p - q, 0), renormalized, and stop. Together the
  two branches emit d_j with probability min(p, q) and anything else with probability
  max(p - q, 0): that is p, so every emitted token is distributed as the target alone would.
- all s accepted: sample one more token from p_s (the "bonus" token): s + 1 tokens in one step.
Everything the ordinary sampler does to the logits (min_tokens, penalties, temperature, top-k,
top-p, min-p) is applied at each position, with the drafts before it counted as output, so p is
the same distribution the non-speculative engine would sample from. Next: the scheduler's
spec-decode bookkeeping (core/sched/scheduler.py, update_from_output).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from vllm_mini.model_executor.layers.sampler import (
    LogprobsTensors,
    Sampler,
    apply_min_tokens_and_penalties,
    apply_top_k_top_p_min_p,
)
from vllm_mini.model_executor.sampling_metadata import SamplingMetadata


@dataclass
class RejectionSamplerOutput:
    token_ids: list[list[int]]  # per request: accepted drafts, then one sampled token
    # One row per emitted token, requests in order (None unless a request asked for logprobs).
    logprobs_tensors: LogprobsTensors | None


def expand_metadata(md: SamplingMetadata, drafts: list[list[int]]) -> SamplingMetadata:
    """The batch's metadata with request i repeated len(drafts[i]) + 1 times, one row per position.

    Row (i, j) sees request i's output followed by its first j drafts: penalties count them, and
    min_tokens masks stop tokens while the output would still be too short at that position.
    """
    counts = [len(d) + 1 for d in drafts]
    index = torch.repeat_interleave(
        torch.arange(len(drafts), device=md.temperature.device),
        torch.tensor(counts, device=md.temperature.device),
    )

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.index_select(0, index)

    outputs, min_tokens, row = [], {}, 0
    per_row: dict[str, dict] = {"logit_bias": {}, "allowed_token_ids": {}, "bad_words": {}}
    for i, d in enumerate(drafts):
        for j in range(len(d) + 1):
            outputs.append(md.output_token_ids[i] + d[:j])
            for name, expanded in per_row.items():
                if i in getattr(md, name):
                    expanded[row] = getattr(md, name)[i]
            if i in md.min_tokens:
                count, stop_ids = md.min_tokens[i]
                if len(md.output_token_ids[i]) + j < count:
                    min_tokens[row] = (count, stop_ids)
            row += 1
    return replace(
        md,
        temperature=pick(md.temperature),
        greedy_mask=pick(md.greedy_mask),
        top_p=pick(md.top_p),
        top_k=pick(md.top_k),
        min_p=pick(md.min_p),
        generators={},  # draws are made per request below, in position order
        prompt_token_ids=pick(md.prompt_token_ids),
        output_token_ids=outputs,
        presence_penalties=pick(md.presence_penalties),
        frequency_penalties=pick(md.frequency_penalties),
        repetition_penalties=pick(md.repetition_penalties),
        min_tokens=min_tokens,
        **per_row,
    )


def _sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from `probs` by the exponential race (the sampler's method)."""
    q = torch.empty_like(probs).exponential_(generator=generator)
    return int(probs.div(q).argmax())


class RejectionSampler:
    def __call__(
        self,
        logits: torch.Tensor,
        drafts: list[list[int]],
        md: SamplingMetadata,
        draft_probs: list[torch.Tensor | None] | None = None,
    ) -> RejectionSamplerOutput:
        """logits: [sum(len(d) + 1), vocab] float32, request i's positions consecutive.

        draft_probs[i]: [len(drafts[i]), vocab], the draft model's distributions q; None for
        proposers whose drafts are certain (n-gram).
        """
        xmd = expand_metadata(md, drafts)
        raw_logprobs = logits.log_softmax(dim=-1) if md.max_num_logprobs is not None else None
        logits = apply_min_tokens_and_penalties(logits, xmd)
        greedy = logits.argmax(dim=-1).tolist()
        probs = None
        if not md.all_greedy:
            scaled = apply_top_k_top_p_min_p(logits / xmd.temperature.unsqueeze(1), xmd)
            probs = scaled.softmax(dim=-1)
        greedy_rows = md.greedy_mask.tolist()

        out: list[list[int]] = []
        emitted_rows: list[int] = []
        start = 0
        for i, d in enumerate(drafts):
            if greedy_rows[i]:
                tokens = self._verify_greedy(d, greedy[start : start + len(d) + 1])
            else:
                q = None if draft_probs is None else draft_probs[i]
                tokens = self._verify_random(
                    d, probs[start : start + len(d) + 1], q, md.generators.get(i)
                )
            out.append(tokens)
            emitted_rows.extend(range(start, start + len(tokens)))
            start += len(d) + 1

        logprobs_tensors = None
        if raw_logprobs is not None:
            rows = torch.tensor(emitted_rows, device=logits.device)
            emitted = torch.tensor([t for tokens in out for t in tokens], device=logits.device)
            logprobs_tensors = Sampler._gather_logprobs(
                raw_logprobs.index_select(0, rows), emitted, md.max_num_logprobs
            )
        return RejectionSamplerOutput(out, logprobs_tensors)

    @staticmethod
    def _verify_greedy(drafts: list[int], targets: list[int]) -> list[int]:
        """targets[j]: the target's argmax after the real token and drafts[:j]."""
        tokens = []
        for d, t in zip(drafts, targets):
            if d != t:
                return tokens + [t]  # the target's own token replaces the first wrong draft
            tokens.append(d)
        return tokens + [targets[len(drafts)]]  # every draft right: the bonus token

    @staticmethod
    def _verify_random(
        drafts: list[int],
        probs: torch.Tensor,
        draft_probs: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> list[int]:
        """probs: [len(drafts) + 1, vocab], the target's processed distributions."""
        if drafts:
            uniforms = torch.rand(len(drafts), generator=generator, device=probs.device).tolist()
            ids = torch.tensor(drafts, device=probs.device)
            p_draft = probs[:-1].gather(1, ids.unsqueeze(1)).squeeze(1).tolist()
            q_draft = (
                [1.0] * len(drafts)
                if draft_probs is None
                else draft_probs.gather(1, ids.unsqueeze(1)).squeeze(1).tolist()
            )
        tokens = []
        for j, d in enumerate(drafts):
            if uniforms[j] < min(1.0, p_draft[j] / q_draft[j]):
                tokens.append(d)
                continue
            # Rejected: what p has and q over-proposed, i.e. the residual max(p - q, 0).
            if draft_probs is None:
                residual = probs[j].clone()
                residual[d] = 0.0  # q is one-hot on d
            else:
                residual = (probs[j] - draft_probs[j]).clamp_(min=0.0)
            if float(residual.sum()) <= 0.0:  # p == q up to rounding: nothing left but p
                residual = probs[j]
            return tokens + [_sample(residual / residual.sum(), generator)]
        return tokens + [_sample(probs[len(drafts)], generator)]
