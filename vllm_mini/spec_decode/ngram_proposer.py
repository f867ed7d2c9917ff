"""Prompt lookup: propose the tokens that followed the last n tokens' earlier occurrence.

Stage 11. Mirrors vllm/v1/spec_decode/ngram_proposer.py (Saxena's "prompt lookup decoding").
When a model copies — a summary quoting its source, a code edit repeating most of the file, an
answer restating the question — its next tokens already appear in the context. So: take the
request's last n tokens (n from prompt_lookup_max down to prompt_lookup_min), find an earlier
place where they occur, and propose the k tokens that came after it. No model runs, so a wrong
guess costs only the extra query positions in the verifying forward pass.

Like vLLM: the longest n wins; among matches of that length, the earliest occurrence (it has
the most tokens after it). vLLM scans with a KMP-style automaton compiled by numba; here one
numpy comparison per n over all windows, which is plenty for contexts of a few thousand tokens.
Next: spec_decode/metrics.py.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def propose_ngram(tokens: np.ndarray, min_n: int, max_n: int, k: int) -> list[int]:
    """Up to k draft tokens continuing `tokens` (a request's prompt + output), or []."""
    total = tokens.shape[0]
    if k <= 0 or total < min_n + 1:
        return []
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = tokens[total - n :]
        # Windows starting at 0 .. total-n-1: every place but the suffix itself.
        windows = sliding_window_view(tokens[: total - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[0]) + n  # the earliest match: the longest continuation
            return tokens[start : start + k].tolist()
    return []


class NgramProposer:
    def __init__(self, min_n: int, max_n: int, k: int, max_model_len: int) -> None:
        self.min_n, self.max_n, self.k = min_n, max_n, k
        self.max_model_len = max_model_len

    def propose(self, tokens: np.ndarray, max_drafts: int) -> list[int]:
        """Drafts for one request; `max_drafts` caps them (max_tokens, max_model_len left)."""
        k = min(self.k, max_drafts, self.max_model_len - tokens.shape[0])
        return propose_ngram(tokens, self.min_n, self.max_n, k)

    def propose_batch(self, batch, rows: list[int], rooms: list[int]) -> list[list[int]]:
        """The proposers' common entry: drafts for each of `rows` of the runner's InputBatch."""
        return [
            self.propose(batch.token_ids_np[i, : batch.num_tokens_np[i]], room) if room > 0 else []
            for i, room in zip(rows, rooms)
        ]

    # The rest of the proposer interface (spec_decode/draft_model.py): no model, no KV, no state.
    def load_model(self) -> None:
        pass

    def initialize_kv_cache(self, num_blocks: int) -> None:
        pass

    def kv_bytes_per_block(self) -> int:
        return 0

    def remove_requests(self, req_ids: set[str]) -> None:
        pass

    def take_draft_probs(self, req_id: str, num_drafts: int) -> None:
        return None  # n-gram drafts are certain: q is one-hot
