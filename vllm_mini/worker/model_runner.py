"""Model runner: from the scheduler's decisions to input tensors, a forward pass and samples.

Stage 5. Mirrors vllm/v1/worker/gpu_model_runner.py (and its InputBatch). The runner keeps, for
every request it has seen, the token ids, block ids and sampling state (a persistent batch), so the
scheduler only sends deltas each step. `execute_model` then:
  1. flattens all scheduled tokens of all requests into one batch: input_ids, positions;
  2. computes each token's KV slot: slot = block_table[pos // block_size] * block_size + pos % block_size;
  3. builds AttentionMetadata (query_start_loc, seq_lens, block_table, slot_mapping);
  4. runs the model under the forward context, keeps only each request's last hidden state,
     computes logits for requests that reached the end of their known tokens, samples.
Next: engine/core.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vllm_mini.attention import Attention
from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.config import VllmConfig
from vllm_mini.core.kv_cache_utils import get_kv_cache_shape
from vllm_mini.core.sched.output import LogprobsLists, ModelRunnerOutput, SchedulerOutput
from vllm_mini.forward_context import set_forward_context
from vllm_mini.model_executor.layers.sampler import Sampler
from vllm_mini.model_executor.model_loader import get_model
from vllm_mini.model_executor.sampling_metadata import SamplingMetadata
from vllm_mini.sampling_params import SamplingParams


@dataclass
class CachedRequestState:
    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    output_token_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def token_ids(self, start: int, end: int) -> list[int]:
        n_prompt = len(self.prompt_token_ids)
        if end <= n_prompt:
            return self.prompt_token_ids[start:end]
        return (self.prompt_token_ids + self.output_token_ids)[start:end]


class ModelRunner:
    def __init__(self, vllm_config: VllmConfig) -> None:
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.block_size = vllm_config.cache_config.block_size
        self.device = vllm_config.device_config.torch_device
        self.requests: dict[str, CachedRequestState] = {}
        self.sampler = Sampler()
        self.model: torch.nn.Module | None = None
        self.attn_layers: list[Attention] = []
        self._paused_generators: dict[str, torch.Generator] = {}

    def load_model(self) -> None:
        self.model = get_model(self.vllm_config)
        self.attn_layers = [m for m in self.model.modules() if isinstance(m, Attention)]

    def initialize_kv_cache(self, num_blocks: int) -> None:
        """One [2, num_blocks, block_size, num_kv_heads, head_size] tensor per attention layer."""
        if self.vllm_config.attention_config.backend == "naive":
            return  # the naive backend keeps its own contiguous per-request caches
        for layer in self.attn_layers:
            shape = get_kv_cache_shape(
                num_blocks, self.block_size, layer.num_kv_heads, layer.head_size
            )
            # zeros, not empty: kernels never read unwritten slots, but garbage NaNs would be hard
            # to debug if one ever did.
            layer.kv_cache = torch.zeros(shape, dtype=self.model_config.dtype, device=self.device)

    # ---------------------------------------------------------------- persistent batch
    def _update_states(self, so: SchedulerOutput) -> None:
        gone = so.finished_req_ids | so.preempted_req_ids
        for req_id in gone:
            state = self.requests.pop(req_id, None)
            if req_id in so.preempted_req_ids and state is not None and state.generator is not None:
                # Keep a preempted request's random stream: when it resumes, it continues it, so
                # a seeded request samples the same tokens whether or not it was preempted.
                self._paused_generators[req_id] = state.generator
        for req_id in so.finished_req_ids:
            self._paused_generators.pop(req_id, None)
        if gone and self.vllm_config.attention_config.backend == "naive":
            for layer in self.attn_layers:
                layer.impl.free_requests(gone)
        for new in so.scheduled_new_reqs:
            params = new.sampling_params
            generator = self._paused_generators.pop(new.req_id, None)
            if generator is None and params.seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(params.seed)
            self.requests[new.req_id] = CachedRequestState(
                req_id=new.req_id,
                prompt_token_ids=new.prompt_token_ids,
                sampling_params=params,
                block_ids=list(new.block_ids),
                num_computed_tokens=new.num_computed_tokens,
                output_token_ids=list(new.output_token_ids),
                generator=generator,
            )
        cached = so.scheduled_cached_reqs
        for req_id, block_ids, num_computed in zip(
            cached.req_ids, cached.new_block_ids, cached.num_computed_tokens
        ):
            state = self.requests[req_id]
            state.block_ids.extend(block_ids)
            state.num_computed_tokens = num_computed

    # ------------------------------------------------------------------------- inputs
    def _prepare_inputs(
        self, so: SchedulerOutput, req_ids: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start_loc = [0]
        seq_lens: list[int] = []
        bs = self.block_size
        for req_id in req_ids:
            state = self.requests[req_id]
            start = state.num_computed_tokens
            end = start + so.num_scheduled_tokens[req_id]
            input_ids.extend(state.token_ids(start, end))
            positions.extend(range(start, end))
            slots.extend(compute_slot_mapping(state.block_ids, start, end, bs))
            query_start_loc.append(query_start_loc[-1] + end - start)
            seq_lens.append(end)
        max_blocks = max(len(self.requests[r].block_ids) for r in req_ids)
        block_table = torch.zeros(len(req_ids), max_blocks, dtype=torch.int32)
        for i, req_id in enumerate(req_ids):
            ids = self.requests[req_id].block_ids
            block_table[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        dev = self.device
        meta = AttentionMetadata(
            num_actual_tokens=len(input_ids),
            max_query_len=max(b - a for a, b in zip(query_start_loc, query_start_loc[1:])),
            max_seq_len=max(seq_lens),
            query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_table=block_table.to(dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            query_start_loc_cpu=query_start_loc,
            seq_lens_cpu=seq_lens,
            req_ids=req_ids,
        )
        ids_t = torch.tensor(input_ids, dtype=torch.long, device=dev)
        pos_t = torch.tensor(positions, dtype=torch.long, device=dev)
        return ids_t, pos_t, meta

    # -------------------------------------------------------------------------- step
    @torch.inference_mode()
    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(so)
        req_ids = [r.req_id for r in so.scheduled_new_reqs] + so.scheduled_cached_reqs.req_ids
        if not req_ids:
            return ModelRunnerOutput([], {}, [])
        input_ids, positions, meta = self._prepare_inputs(so, req_ids)
        with set_forward_context(meta):
            hidden_states = self.model(input_ids, positions)

        # Only requests whose scheduled tokens reach their last known token sample; a partial
        # prefill chunk just fills the KV cache.
        sample_rows = [
            i
            for i, req_id in enumerate(req_ids)
            if meta.seq_lens_cpu[i] >= self.requests[req_id].num_tokens
        ]
        sampled: list[list[int]] = [[] for _ in req_ids]
        logprobs = None
        if sample_rows:
            last_token_idx = torch.tensor(
                [meta.query_start_loc_cpu[i + 1] - 1 for i in sample_rows]
            )
            logits = self.model.compute_logits(hidden_states[last_token_idx.to(self.device)])
            states = [self.requests[req_ids[i]] for i in sample_rows]
            metadata = SamplingMetadata.from_params(
                params=[s.sampling_params for s in states],
                prompt_token_ids=[s.prompt_token_ids for s in states],
                output_token_ids=[s.output_token_ids for s in states],
                generators={j: s.generator for j, s in enumerate(states) if s.generator},
                vocab_size=self.model_config.vocab_size,
                device=self.device,
            )
            out = self.sampler(logits.float(), metadata)
            tokens = out.sampled_token_ids.tolist()
            for j, i in enumerate(sample_rows):
                states[j].output_token_ids.append(tokens[j])
                sampled[i] = [tokens[j]]
            if out.logprobs_tensors is not None:
                logprobs = _scatter_logprobs(
                    out.logprobs_tensors.tolists(), sample_rows, len(req_ids)
                )
        return ModelRunnerOutput(
            req_ids=req_ids,
            req_id_to_index={r: i for i, r in enumerate(req_ids)},
            sampled_token_ids=sampled,
            logprobs=logprobs,
        )


def compute_slot_mapping(block_ids: list[int], start: int, end: int, block_size: int) -> list[int]:
    """KV slot of each position in [start, end): its physical block * block_size + offset."""
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(start, end)]


def _scatter_logprobs(lists, rows: list[int], num_reqs: int) -> LogprobsLists:
    ids, lps, ranks = lists
    out = LogprobsLists(
        [[] for _ in range(num_reqs)], [[] for _ in range(num_reqs)], [0] * num_reqs
    )
    for j, i in enumerate(rows):
        out.logprob_token_ids[i] = ids[j]
        out.logprobs[i] = lps[j]
        out.sampled_token_ranks[i] = ranks[j]
    return out
