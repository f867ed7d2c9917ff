"""The random workload for `vllm-mini bench serve`: seeded prompts made of token ids.

Stage 12. Mirrors vllm/benchmarks/datasets/datasets.py (RandomDataset). Each request is a prompt of
`input_len` random token ids and a fixed number of tokens to generate (the client sends
`ignore_eos`, so the server really produces that many). Lengths vary by `range_ratio` around the
requested ones, like vLLM's `--random-range-ratio`.

Why token ids and not text: a text prompt's length in tokens depends on the tokenizer, which the
client may not have (the server can run a local GGUF file). The completions API accepts a list of
token ids as `prompt`, so we send ids and know the exact input length. The ids must be valid for
the server's model, so `probe_vocab_size` asks the server itself: the engine's Processor rejects
an id outside [0, vocab_size) with a 400 before anything is scheduled, and a one-token prompt with
`max_tokens=1` that is accepted costs one tiny forward pass. An exponential then binary search
finds the first rejected id in about 2*log2(vocab_size) requests, which also warm the server up
(vLLM sends one "initial test run" request for the same reason). Read next: serve.py.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import httpx


@dataclass
class SampleRequest:
    """One benchmark request: what to send and how many tokens to ask for."""

    prompt_token_ids: list[int]
    expected_output_len: int

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def _length_range(length: int, range_ratio: float) -> tuple[int, int]:
    """[low, high] around `length`, as vLLM's RandomDataset: uniform in length * (1 -/+ r)."""
    low = max(1, math.floor(length * (1 - range_ratio)))
    return low, max(low, math.ceil(length * (1 + range_ratio)))


def sample_random_requests(
    num_requests: int,
    input_len: int,
    output_len: int,
    vocab_size: int,
    seed: int,
    range_ratio: float = 0.0,
) -> list[SampleRequest]:
    """`num_requests` prompts of random ids in [0, vocab_size), reproducible from `seed`.

    Independent random ids make two prompts share a first KV block with negligible probability,
    so prefix caching cannot flatter the numbers.
    """
    if num_requests < 1 or input_len < 1 or output_len < 1:
        raise ValueError(
            "num_requests, input_len and output_len must be >= 1, got "
            f"{num_requests}, {input_len}, {output_len}"
        )
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range_ratio must be in [0, 1), got {range_ratio}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    rng = random.Random(seed)
    in_low, in_high = _length_range(input_len, range_ratio)
    out_low, out_high = _length_range(output_len, range_ratio)
    requests = []
    for _ in range(num_requests):
        n_in = rng.randint(in_low, in_high)
        ids = [rng.randrange(vocab_size) for _ in range(n_in)]
        requests.append(SampleRequest(ids, rng.randint(out_low, out_high)))
    return requests


async def _accepts_token(
    client: httpx.AsyncClient, base_url: str, model: str, token_id: int
) -> bool:
    resp = await client.post(
        f"{base_url}/v1/completions",
        json={"model": model, "prompt": [token_id], "max_tokens": 1, "temperature": 0.0},
    )
    if resp.status_code == 200:
        return True
    if 400 <= resp.status_code < 500 and resp.status_code not in (401, 403, 404):
        return False  # the request was understood and refused: the id is out of range
    raise RuntimeError(
        f"probing the vocabulary with token id {token_id} failed: "
        f"HTTP {resp.status_code} {resp.text[:300]}"
    )


async def probe_vocab_size(
    client: httpx.AsyncClient, base_url: str, model: str, max_vocab: int = 1 << 24
) -> int:
    """The server model's vocabulary size: the smallest token id the server refuses."""
    if not await _accepts_token(client, base_url, model, 0):
        raise RuntimeError("the server refused token id 0; cannot build token-id prompts")
    good, bad = 0, 1024
    while await _accepts_token(client, base_url, model, bad):
        good, bad = bad, bad * 2
        if bad > max_vocab:
            raise RuntimeError(f"the server accepted every token id up to {good}")
    while bad - good > 1:  # invariant: `good` accepted, `bad` refused
        mid = (good + bad) // 2
        if await _accepts_token(client, base_url, model, mid):
            good = mid
        else:
            bad = mid
    return bad
