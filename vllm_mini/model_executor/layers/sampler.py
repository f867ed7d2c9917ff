"""Sampler: logits -> next tokens, for a whole batch with per-request parameters.

Stage 2 (used from stage 5). Mirrors vllm/v1/sample/sampler.py with ops/penalties.py and
ops/topk_topp_sampler.py. Order of operations (as in vLLM V1):
  1. logprobs, if asked, from the RAW logits (what the model believes, before any processing);
  2. min_tokens: stop tokens are masked until a request has produced enough tokens;
  3. penalties: repetition (prompt + output), frequency and presence (output only);
  4. greedy rows: argmax; random rows: temperature, min-p, top-k, top-p, then sample.
Sampling uses the "exponential race": argmax(probs / E) with E ~ Exponential(1) draws exactly from
`probs`, needs no cumulative sum, and lets seeded rows draw E from their own generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vllm_mini.model_executor.sampling_metadata import SamplingMetadata


@dataclass
class LogprobsTensors:
    logprob_token_ids: torch.Tensor  # [B, k + 1]: the sampled token, then the top-k
    logprobs: torch.Tensor  # [B, k + 1]
    selected_token_ranks: torch.Tensor  # [B]: 1-based rank of the sampled token

    def tolists(self) -> tuple[list[list[int]], list[list[float]], list[int]]:
        return (
            self.logprob_token_ids.tolist(),
            self.logprobs.tolist(),
            self.selected_token_ranks.tolist(),
        )


@dataclass
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # [B] int64
    logprobs_tensors: LogprobsTensors | None


def apply_penalties(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Repetition penalty (CTRL, Keskar et al. 2019) and OpenAI's presence/frequency penalties."""
    batch, vocab = logits.shape
    # counts[i, t]: how often token t appears in request i's output so far.
    counts = torch.zeros(batch, vocab + 1, dtype=torch.long, device=logits.device)
    for i, ids in enumerate(md.output_token_ids):
        if ids:
            ones = torch.ones(len(ids), dtype=torch.long, device=logits.device)
            counts[i].index_add_(0, torch.tensor(ids, device=logits.device), ones)
    output_counts = counts[:, :vocab]
    prompt_mask = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=logits.device)
    prompt_mask.scatter_(
        1, md.prompt_token_ids, True
    )  # padding id = vocab lands in the spare column
    seen = prompt_mask[:, :vocab] | (output_counts > 0)
    rep = md.repetition_penalties.unsqueeze(1)
    # Seen tokens get less likely: positive logits are divided, negative ones multiplied.
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalized, logits)
    logits = logits - md.frequency_penalties.unsqueeze(1) * output_counts
    logits = logits - md.presence_penalties.unsqueeze(1) * (output_counts > 0)
    return logits


def apply_top_k_top_p_min_p(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Mask (to -inf) tokens outside min-p, top-k and the top-p nucleus. Logits are temperature-scaled."""
    if md.min_p is not None:
        probs = logits.softmax(dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * md.min_p.unsqueeze(1)
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    if md.top_k is None and md.top_p is None:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    remove = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if md.top_k is not None:
        ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
        remove |= ranks >= md.top_k.unsqueeze(1)
    if md.top_p is not None:
        probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token if the mass BEFORE it
        # already reaches top_p (the top token always survives).
        mass_before = probs.cumsum(dim=-1) - probs
        remove |= mass_before >= md.top_p.unsqueeze(1)
    masked = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, masked)


def apply_min_tokens_and_penalties(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Steps 2 and 3 above: what the request's controls and history do to its logits (masks in
    place). vLLM's order: allowed_token_ids, bad_words, min_tokens, logit_bias, then penalties.
    The rejection sampler (stage 11) applies the same per draft position."""
    for row, allowed in md.allowed_token_ids.items():
        keep = logits[row, allowed].clone()
        logits[row] = float("-inf")
        logits[row, allowed] = keep
    for row, sequences in md.bad_words.items():
        output = md.output_token_ids[row]
        for seq in sequences:
            # Ban the last token of a sequence whose other tokens end the output so far.
            if len(seq) == 1 or output[len(output) - len(seq) + 1 :] == seq[:-1]:
                logits[row, seq[-1]] = float("-inf")
    for row, (_, stop_ids) in md.min_tokens.items():
        if stop_ids:
            logits[row, list(stop_ids)] = float("-inf")
    for row, bias in md.logit_bias.items():
        logits[row, list(bias)] += torch.tensor(list(bias.values()), device=logits.device)
    if not md.no_penalties:
        logits = apply_penalties(logits, md)
    return logits


def random_sample(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    q = torch.empty_like(probs).exponential_()
    for row, generator in generators.items():
        q[row].exponential_(generator=generator)
    return probs.div(q).argmax(dim=-1)


class Sampler(nn.Module):
    def forward(self, logits: torch.Tensor, md: SamplingMetadata) -> SamplerOutput:
        # logits: [B, vocab] float32
        raw_logprobs = logits.log_softmax(dim=-1) if md.max_num_logprobs is not None else None
        logits = apply_min_tokens_and_penalties(logits, md)

        greedy = logits.argmax(dim=-1)
        if md.all_greedy:
            sampled = greedy
        else:
            scaled = logits / md.temperature.unsqueeze(1)
            scaled = apply_top_k_top_p_min_p(scaled, md)
            sampled = random_sample(scaled.softmax(dim=-1), md.generators)
            if not md.all_random:
                sampled = torch.where(md.greedy_mask, greedy, sampled)

        logprobs_tensors = None
        if raw_logprobs is not None:
            logprobs_tensors = self._gather_logprobs(raw_logprobs, sampled, md.max_num_logprobs)
        return SamplerOutput(sampled, logprobs_tensors)

    @staticmethod
    def _gather_logprobs(logprobs: torch.Tensor, sampled: torch.Tensor, k: int) -> LogprobsTensors:
        sampled_lp = logprobs.gather(1, sampled.unsqueeze(1))  # [B, 1]
        # Rank 1 = most likely; count tokens strictly more likely than the sampled one.
        ranks = (logprobs > sampled_lp).sum(dim=-1) + 1
        top_lp, top_ids = (
            logprobs.topk(k, dim=-1) if k > 0 else (sampled_lp[:, :0], sampled.unsqueeze(1)[:, :0])
        )
        return LogprobsTensors(
            torch.cat([sampled.unsqueeze(1), top_ids], dim=1),
            torch.cat([sampled_lp, top_lp], dim=1),
            ranks,
        )
