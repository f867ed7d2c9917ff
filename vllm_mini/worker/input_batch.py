"""InputBatch: the persistent batch — running requests as rows of preallocated CPU tensors.

Stage 5. Mirrors vllm/v1/worker/gpu_input_batch.py. Most requests in a step were also in the last
one, so the runner keeps them in place: row i holds one request's token ids (prompt, then output),
its token counts, its block table row (block_table.py) and its sampling parameters. A step only
writes what changed — the scheduler's deltas (num_computed_tokens, new block ids) and the token
each request sampled — and the model inputs are gathered from these tensors with vectorized ops
(see ModelRunner._prepare_inputs). Requests enter in free rows; when requests leave, `condense`
moves the last rows into the holes so rows [0, num_reqs) stay dense. The sampling metadata is
built from the rows and reused until the set of requests changes. Next: model_runner.py.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch

from vllm_mini.model_executor.sampling_metadata import SamplingMetadata
from vllm_mini.sampling_params import SamplingParams, SamplingType
from vllm_mini.worker.block_table import BlockTable


@dataclass
class CachedRequestState:
    """What the runner remembers about a request between steps (vLLM keeps this beside the batch,
    so a request that sits out a step can re-enter the batch without the scheduler's help)."""

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    output_token_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    lora_int_id: int = 0  # its LoRA adapter (stage 9), 0: the base model
    # prompt_logprobs gathered chunk by chunk: (ids, logprobs, ranks) rows, None when not wanted
    # (or already sent).
    prompt_logprobs: tuple[list, list, list] | None = None
    mm_features: list = field(default_factory=list)  # its images (stage 10)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)


class InputBatch:
    def __init__(
        self,
        max_num_reqs: int,
        max_model_len: int,
        block_size: int,
        vocab_size: int,
        device: torch.device,
    ) -> None:
        self.max_num_reqs = max_num_reqs
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.device = device
        # Row -> request id; None marks a hole left by a removed request until condense().
        self.req_ids: list[str | None] = []
        self.req_id_to_index: dict[str, int] = {}
        self.output_token_ids: list[list[int] | None] = []  # the states' lists, shared
        self._holes: list[int] = []  # a min-heap: new requests take the lowest free row

        # token_ids: [max_num_reqs, max_model_len] int32, prompt then output tokens of each row.
        self.token_ids = torch.zeros(max_num_reqs, max_model_len, dtype=torch.int32)
        self.num_tokens = torch.zeros(max_num_reqs, dtype=torch.int64)
        self.num_prompt_tokens = torch.zeros(max_num_reqs, dtype=torch.int64)
        self.num_computed_tokens = torch.zeros(max_num_reqs, dtype=torch.int64)
        self.lora_ids = torch.zeros(max_num_reqs, dtype=torch.int64)  # adapter id per row
        # numpy views of the same memory, for the per-step work on the CPU: writing one element
        # costs ~0.1 µs through numpy and ~2 µs through torch, and a small numpy op ~1 µs against
        # torch's ~5 µs (vLLM's InputBatch pairs every CPU tensor with a numpy view the same way).
        self.token_ids_np = self.token_ids.numpy()
        self.num_tokens_np = self.num_tokens.numpy()
        self.num_prompt_tokens_np = self.num_prompt_tokens.numpy()
        self.num_computed_tokens_np = self.num_computed_tokens.numpy()
        self.lora_ids_np = self.lora_ids.numpy()
        self.block_table = BlockTable(max_num_reqs, -(-max_model_len // block_size), block_size)

        # Sampling parameters, one value per row (vLLM's InputBatch keeps the same columns).
        def column(dtype: torch.dtype, fill: float) -> torch.Tensor:
            return torch.full((max_num_reqs,), fill, dtype=dtype)

        self.temperature = column(torch.float32, 1.0)  # greedy rows hold 1.0, as the sampler wants
        self.greedy = column(torch.bool, False)
        self.top_p = column(torch.float32, 1.0)
        self.top_k = column(torch.int64, vocab_size)  # vocab_size = disabled
        self.min_p = column(torch.float32, 0.0)
        self.presence_penalties = column(torch.float32, 0.0)
        self.frequency_penalties = column(torch.float32, 0.0)
        self.repetition_penalties = column(torch.float32, 1.0)
        # Every one-value-per-row array, as numpy views: what a row move copies.
        self._row_values = [
            t.numpy()
            for t in (
                self.num_tokens,
                self.num_prompt_tokens,
                self.num_computed_tokens,
                self.lora_ids,
                self.temperature,
                self.greedy,
                self.top_p,
                self.top_k,
                self.min_p,
                self.presence_penalties,
                self.frequency_penalties,
                self.repetition_penalties,
            )
        ]
        # Which requests need which sampler feature, so flags need no scan of the tensors.
        self.greedy_reqs: set[str] = set()
        self.top_p_reqs: set[str] = set()
        self.top_k_reqs: set[str] = set()
        self.min_p_reqs: set[str] = set()
        self.penalty_reqs: set[str] = set()
        self.generators: dict[str, torch.Generator] = {}
        self.num_logprobs: dict[str, int] = {}
        self.min_tokens: dict[str, tuple[int, set[int]]] = {}
        # Logits controls, by request (most requests have none).
        self.logit_bias: dict[str, dict[int, float]] = {}
        self.allowed_token_ids: dict[str, list[int]] = {}
        self.bad_words: dict[str, list[list[int]]] = {}
        self._sampling_metadata: SamplingMetadata | None = None  # valid until the rows change

    @property
    def num_reqs(self) -> int:
        return len(self.req_id_to_index)

    # ------------------------------------------------------------------ rows in and out
    def add_request(self, state: CachedRequestState) -> int:
        if self._holes:
            row = heapq.heappop(self._holes)
            self.req_ids[row] = state.req_id
            self.output_token_ids[row] = state.output_token_ids
        else:
            row = len(self.req_ids)
            if row >= self.max_num_reqs:
                raise RuntimeError(f"the batch is full: max_num_seqs is {self.max_num_reqs}")
            self.req_ids.append(state.req_id)
            self.output_token_ids.append(state.output_token_ids)
        self.req_id_to_index[state.req_id] = row
        num_prompt = len(state.prompt_token_ids)
        self.token_ids_np[row, :num_prompt] = state.prompt_token_ids
        self.token_ids_np[row, num_prompt : state.num_tokens] = state.output_token_ids
        self.num_tokens_np[row] = state.num_tokens
        self.num_prompt_tokens_np[row] = num_prompt
        self.num_computed_tokens_np[row] = state.num_computed_tokens
        self.lora_ids_np[row] = state.lora_int_id
        self.block_table.add_row(state.block_ids, row)
        self._add_sampling_params(state, row)
        self._sampling_metadata = None
        return row

    def _add_sampling_params(self, state: CachedRequestState, row: int) -> None:
        p, req_id = state.sampling_params, state.req_id
        greedy = p.sampling_type == SamplingType.GREEDY
        # Written once per request, so plain tensor indexing is cheap enough here.
        self.temperature[row] = 1.0 if greedy else p.temperature
        self.greedy[row] = greedy
        self.top_p[row] = p.top_p
        self.top_k[row] = p.top_k if p.top_k > 0 else self.vocab_size
        self.min_p[row] = p.min_p
        self.presence_penalties[row] = p.presence_penalty
        self.frequency_penalties[row] = p.frequency_penalty
        self.repetition_penalties[row] = p.repetition_penalty
        for reqs, used in (
            (self.greedy_reqs, greedy),
            (self.top_p_reqs, p.top_p < 1.0),
            (self.top_k_reqs, p.top_k > 0),
            (self.min_p_reqs, p.min_p > 0.0),
            (
                self.penalty_reqs,
                p.presence_penalty != 0 or p.frequency_penalty != 0 or p.repetition_penalty != 1,
            ),
        ):
            if used:
                reqs.add(req_id)
        if state.generator is not None:
            self.generators[req_id] = state.generator
        if p.logprobs is not None:
            self.num_logprobs[req_id] = p.logprobs
        if p.min_tokens:
            # all_stop_token_ids holds stop_token_ids plus EOS (added by the engine).
            self.min_tokens[req_id] = (p.min_tokens, set(p.all_stop_token_ids))
        if p.logit_bias:
            self.logit_bias[req_id] = p.logit_bias
        if p.allowed_token_ids:
            self.allowed_token_ids[req_id] = p.allowed_token_ids
        if p.bad_words_token_ids:
            self.bad_words[req_id] = p.bad_words_token_ids

    def remove_request(self, req_id: str) -> int | None:
        """Free the request's row (a hole until the next add or condense); None if absent."""
        row = self.req_id_to_index.pop(req_id, None)
        if row is None:
            return None
        self.req_ids[row] = None
        self.output_token_ids[row] = None
        heapq.heappush(self._holes, row)
        for reqs in (
            self.greedy_reqs,
            self.top_p_reqs,
            self.top_k_reqs,
            self.min_p_reqs,
            self.penalty_reqs,
        ):
            reqs.discard(req_id)
        for per_req in (
            self.generators,
            self.num_logprobs,
            self.min_tokens,
            self.logit_bias,
            self.allowed_token_ids,
            self.bad_words,
        ):
            per_req.pop(req_id, None)
        self._sampling_metadata = None
        return row

    def condense(self) -> None:
        """Move the last rows down into the holes, so requests fill rows [0, num_reqs)."""
        for hole in sorted(self._holes):
            while self.req_ids and self.req_ids[-1] is None:  # trailing holes just disappear
                self.req_ids.pop()
                self.output_token_ids.pop()
            if hole >= len(self.req_ids):
                break
            self._move_row(len(self.req_ids) - 1, hole)
            self.req_ids.pop()
            self.output_token_ids.pop()
        self._holes = []

    def _move_row(self, src: int, dst: int) -> None:
        req_id = self.req_ids[src]
        self.req_ids[dst] = req_id
        self.output_token_ids[dst] = self.output_token_ids[src]
        self.req_id_to_index[req_id] = dst
        n = self.num_tokens_np[src]
        self.token_ids_np[dst, :n] = self.token_ids_np[src, :n]
        for values in self._row_values:
            values[dst] = values[src]
        self.block_table.move_row(src, dst)
        self._sampling_metadata = None

    # ------------------------------------------------------------------- per-step deltas
    def update_request(self, row: int, num_computed_tokens: int, new_block_ids: list[int]) -> None:
        self.num_computed_tokens_np[row] = num_computed_tokens
        self.block_table.append_row(new_block_ids, row)

    def append_token(self, row: int, token: int) -> None:
        """A token the row's request just sampled: after its last token, and in its state."""
        n = int(self.num_tokens_np[row])
        if n < self.max_model_len:  # a request at max_model_len is done: its last token is no input
            self.token_ids_np[row, n] = token
        self.num_tokens_np[row] = n + 1
        self.output_token_ids[row].append(token)  # the request state's own list

    # ------------------------------------------------------------------ sampling metadata
    def sampling_metadata(self, rows: list[int] | None = None) -> SamplingMetadata:
        """The sampler's view of `rows` (None: every row), row j of it being rows[j].

        The whole-batch version is built once and reused until a request enters, leaves or moves
        (vLLM's refresh_metadata); only min_tokens, which depends on output lengths, is redone.
        """
        if rows is None:
            if self._sampling_metadata is None:
                self._sampling_metadata = self._make_sampling_metadata(list(range(self.num_reqs)))
            metadata = self._sampling_metadata
        else:
            metadata = self._make_sampling_metadata(rows)
        metadata.min_tokens = self._min_tokens(rows)
        return metadata

    def _make_sampling_metadata(self, rows: list[int]) -> SamplingMetadata:
        ids = [self.req_ids[row] for row in rows]
        index = torch.tensor(rows, dtype=torch.long)

        def pick(column: torch.Tensor) -> torch.Tensor:
            return column.index_select(0, index).to(self.device)

        def used(reqs: set[str]) -> bool:
            return any(req_id in reqs for req_id in ids)

        no_penalties = not used(self.penalty_reqs)
        logprobs = [self.num_logprobs[r] for r in ids if r in self.num_logprobs]
        return SamplingMetadata(
            temperature=pick(self.temperature),
            greedy_mask=pick(self.greedy),
            all_greedy=all(req_id in self.greedy_reqs for req_id in ids),
            all_random=not used(self.greedy_reqs),
            top_p=pick(self.top_p) if used(self.top_p_reqs) else None,
            top_k=pick(self.top_k) if used(self.top_k_reqs) else None,
            min_p=pick(self.min_p) if used(self.min_p_reqs) else None,
            generators={j: self.generators[r] for j, r in enumerate(ids) if r in self.generators},
            max_num_logprobs=max(logprobs) if logprobs else None,
            no_penalties=no_penalties,
            prompt_token_ids=None if no_penalties else self._prompt_token_ids(index),
            output_token_ids=[self.output_token_ids[row] for row in rows],
            presence_penalties=None if no_penalties else pick(self.presence_penalties),
            frequency_penalties=None if no_penalties else pick(self.frequency_penalties),
            repetition_penalties=None if no_penalties else pick(self.repetition_penalties),
            min_tokens={},
            logit_bias={j: self.logit_bias[r] for j, r in enumerate(ids) if r in self.logit_bias},
            allowed_token_ids={
                j: self.allowed_token_ids[r]
                for j, r in enumerate(ids)
                if r in self.allowed_token_ids
            },
            bad_words={j: self.bad_words[r] for j, r in enumerate(ids) if r in self.bad_words},
        )

    def _prompt_token_ids(self, index: torch.Tensor) -> torch.Tensor:
        """[len(index), longest prompt] int64, padded with vocab_size (a column the penalty
        scatter adds and then drops), cut straight out of the token-id rows."""
        num_prompt = self.num_prompt_tokens.index_select(0, index)
        width = int(num_prompt.max())
        prompt = self.token_ids[index, :width].long()
        prompt.masked_fill_(torch.arange(width) >= num_prompt.unsqueeze(1), self.vocab_size)
        return prompt.to(self.device)

    def _min_tokens(self, rows: list[int] | None) -> dict[int, tuple[int, set[int]]]:
        """Sampler row -> (min_tokens, stop ids) for requests still short of their min_tokens."""
        if not self.min_tokens:
            return {}
        position = None if rows is None else {row: j for j, row in enumerate(rows)}
        out = {}
        for req_id, (min_tokens, stop_ids) in self.min_tokens.items():
            row = self.req_id_to_index[req_id]
            j = row if position is None else position.get(row)
            if j is not None and len(self.output_token_ids[row]) < min_tokens:
                out[j] = (min_tokens, stop_ids)
        return out
