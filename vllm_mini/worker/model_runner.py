"""Model runner: from the scheduler's decisions to input tensors, a forward pass and samples.

Stage 5. Mirrors vllm/v1/worker/gpu_model_runner.py. The runner keeps every running request in a
persistent batch (input_batch.py, vLLM's InputBatch): preallocated tensors of token ids, token
counts, block table rows and sampling parameters, so each step only writes the scheduler's deltas
and the sampled tokens. `execute_model` then:
  1. updates the batch: requests leave, enter, get new blocks; holes are condensed;
  2. gathers all scheduled tokens of all requests into one flat batch: input_ids, positions;
  3. computes each token's KV slot:
       slot = block_table[pos // block_size] * block_size + pos % block_size;
  4. builds AttentionMetadata (query_start_loc, seq_lens, block_table, slot_mapping);
  5. runs the model under the forward context, keeps only each request's last hidden state,
     computes logits for requests that reached the end of their known tokens, samples.
Steps 2-4 are vectorized array ops; `compute_slot_mapping` below is the list version to read first.
With speculative decoding (stage 11) a request's draft tokens are written after its last token,
so they become ordinary input positions; its last 1 + k positions get logits, the rejection
sampler keeps what the target agrees with, and the proposer drafts the next step's tokens.
Next: engine/core.py.
"""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import torch

from vllm_mini.attention import Attention
from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.attention.layer import set_static_forward_context
from vllm_mini.attention.selector import get_attn_backend
from vllm_mini.compilation.cuda_graph import CUDAGraphRunner
from vllm_mini.compilation.wrapper import maybe_compile
from vllm_mini.config import CUDAGraphMode, VllmConfig
from vllm_mini.core.kv_cache_utils import get_kv_cache_shape
from vllm_mini.core.sched.output import (
    CachedRequestData,
    GrammarOutput,
    LogprobsLists,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
)
from vllm_mini.distributed import get_pp_group
from vllm_mini.forward_context import set_forward_context
from vllm_mini.lora.model_manager import LoRAModelManager
from vllm_mini.model_executor.layers.rejection_sampler import RejectionSampler
from vllm_mini.model_executor.layers.sampler import Sampler
from vllm_mini.model_executor.model_loader import get_model
from vllm_mini.sampling_params import SamplingParams
from vllm_mini.structured_output.utils import apply_grammar_bitmask
from vllm_mini.worker.input_batch import CachedRequestState, InputBatch
from vllm_mini.worker.multimodal_runner import MultiModalRunnerMixin
from vllm_mini.worker.pipeline_parallel import PipelineParallelMixin
from vllm_mini.worker.prompt_logprobs import PromptLogprobsMixin
from vllm_mini.worker.spec_decode_runner import SpecDecodeMixin, make_drafter

__all__ = ["CachedRequestState", "ModelRunner", "compute_slot_mapping"]


class ModelRunner(
    SpecDecodeMixin, PromptLogprobsMixin, MultiModalRunnerMixin, PipelineParallelMixin
):
    def __init__(self, vllm_config: VllmConfig) -> None:
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.block_size = vllm_config.cache_config.block_size
        self.device = vllm_config.device_config.torch_device
        # Every request the scheduler runs, whether or not it is in this step's batch.
        self.requests: dict[str, CachedRequestState] = {}
        self.input_batch = InputBatch(
            max_num_reqs=vllm_config.scheduler_config.max_num_seqs,
            max_model_len=self.model_config.max_model_len,
            block_size=self.block_size,
            vocab_size=self.model_config.vocab_size,
            device=self.device,
        )
        self.attn_backend = get_attn_backend(vllm_config.attention_config.backend)
        self.sampler = Sampler()
        self.rejection_sampler = RejectionSampler()
        self.drafter = make_drafter(vllm_config)  # stage 11; None without speculation
        self.prompt_logprob_reqs: set[str] = set()  # requests still owed their prompt logprobs
        self.model: torch.nn.Module | None = None
        self.lora_manager: LoRAModelManager | None = None
        self.attn_layers: list[Attention] = []
        self._paused_generators: dict[str, torch.Generator] = {}
        self.encoder_cache: dict[str, torch.Tensor] = {}  # image hash -> embeddings (stage 10)

    def load_model(self) -> None:
        model = get_model(self.vllm_config)
        self.attn_layers = [m for m in model.modules() if isinstance(m, Attention)]
        # Stage 9: target layers become LoRA wrappers around the loaded base layers.
        self.lora_manager = None
        if self.vllm_config.lora_config is not None:
            self.lora_manager = LoRAModelManager(model, self.vllm_config.lora_config, self.device)
        # The attention custom op finds its layer by name (stage 6, compilation/wrapper.py).
        self.static_forward_context = {layer.layer_name: layer for layer in self.attn_layers}
        self.model = maybe_compile(model, self.vllm_config.compilation_config)
        self.cudagraph_runner = self._make_cudagraph_runner()
        if self.drafter is not None:
            self.drafter.load_model()

    def _make_cudagraph_runner(self) -> CUDAGraphRunner | None:
        """Decode steps through static, padded buffers (stage 6; compilation/cuda_graph.py)."""
        cc = self.vllm_config.compilation_config
        if cc.cudagraph_mode != CUDAGraphMode.FULL_DECODE_ONLY.value:
            return None
        if not self.attn_backend.uses_paged_kv_cache:
            return None  # per-request caches (naive) have no slots to pad into
        return CUDAGraphRunner(
            self.model,
            cc.cudagraph_capture_sizes,
            max_blocks_per_req=-(-self.model_config.max_model_len // self.block_size),
            max_model_len=self.model_config.max_model_len,
            device=self.device,
            capture_enabled=self.attn_backend.supports_cudagraph,
        )

    def capture_model(self) -> None:
        """Capture the decode CUDA graphs; the worker calls it once the KV cache exists."""
        if self.cudagraph_runner is None:
            return
        empty = torch.zeros(0, dtype=torch.int32, device=self.device)
        template = AttentionMetadata(0, 1, 1, empty, empty, empty, empty.long(), [0], [], [])
        set_static_forward_context(self.static_forward_context)
        self.cudagraph_runner.capture(template)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        """One [2, num_blocks, block_size, num_kv_heads, head_size] tensor per attention layer."""
        if not self.attn_backend.uses_paged_kv_cache:
            return  # e.g. the naive backend keeps its own contiguous per-request caches
        for layer in self.attn_layers:
            shape = get_kv_cache_shape(
                num_blocks, self.block_size, layer.num_kv_heads, layer.head_size
            )
            # zeros, not empty: kernels never read unwritten slots, but garbage NaNs would be hard
            # to debug if one ever did.
            layer.kv_cache = torch.zeros(shape, dtype=self.model_config.dtype, device=self.device)
        if self.drafter is not None:
            self.drafter.initialize_kv_cache(num_blocks)  # same blocks, the draft's own layers

    # ---------------------------------------------------------------- persistent batch
    def _update_states(self, so: SchedulerOutput) -> None:
        batch = self.input_batch
        gone = so.finished_req_ids | so.preempted_req_ids
        for req_id in gone:
            state = self.requests.pop(req_id, None)
            batch.remove_request(req_id)
            if req_id in so.preempted_req_ids and state is not None and state.generator is not None:
                # Keep a preempted request's random stream: when it resumes, it continues it, so
                # a seeded request samples the same tokens whether or not it was preempted.
                self._paused_generators[req_id] = state.generator
        for req_id in so.finished_req_ids:
            self._paused_generators.pop(req_id, None)
        self.prompt_logprob_reqs -= gone
        if self.drafter is not None:
            self.drafter.remove_requests(gone)
        if gone:
            for layer in self.attn_layers:  # backends that keep per-request memory free it
                layer.impl.free_requests(gone)
        # Running requests the scheduler skipped this step (its token budget ran out) leave the
        # batch but keep their state; they re-enter when they are scheduled again.
        for req_id in [r for r in batch.req_id_to_index if r not in so.num_scheduled_tokens]:
            batch.remove_request(req_id)
        for new in so.scheduled_new_reqs:
            params = new.sampling_params
            generator = self._paused_generators.pop(new.req_id, None)
            if generator is None and params.seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(params.seed)
            state = CachedRequestState(
                req_id=new.req_id,
                prompt_token_ids=new.prompt_token_ids,
                sampling_params=params,
                block_ids=list(new.block_ids),
                num_computed_tokens=new.num_computed_tokens,
                output_token_ids=list(new.output_token_ids),
                generator=generator,
                lora_int_id=new.lora_int_id,
                mm_features=new.mm_features,
                # Only before the first output token: a request resumed after preemption has
                # sent its prompt logprobs already.
                prompt_logprobs=([], [], [])
                if params.prompt_logprobs is not None and not new.output_token_ids
                else None,
            )
            self.requests[new.req_id] = state
            batch.add_request(state)
            if state.prompt_logprobs is not None:
                self.prompt_logprob_reqs.add(new.req_id)
        cached = so.scheduled_cached_reqs
        for req_id, block_ids, num_computed in zip(
            cached.req_ids, cached.new_block_ids, cached.num_computed_tokens
        ):
            state = self.requests[req_id]
            state.block_ids.extend(block_ids)
            state.num_computed_tokens = num_computed
            row = batch.req_id_to_index.get(req_id)
            if row is None:
                batch.add_request(state)  # back from a step it sat out
            else:
                batch.update_request(row, num_computed, block_ids)  # only the deltas
        batch.condense()

    # ------------------------------------------------------------------------- inputs
    def _prepare_inputs(
        self, so: SchedulerOutput, req_ids: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Flat input_ids, positions and the step's AttentionMetadata; req_ids[i] is batch row i.

        All index arithmetic is numpy on the batch's CPU arrays, a handful of whole-array ops
        whatever the batch size (on small arrays a numpy op costs a fraction of a torch op);
        the results become tensors (zero-copy) and move to the device once.
        """
        batch = self.input_batch
        n = len(req_ids)
        num_scheduled = np.array([so.num_scheduled_tokens[r] for r in req_ids])  # [n]
        cu_num_tokens = np.cumsum(num_scheduled)  # [n]: end of each request's rows
        total = int(cu_num_tokens[-1])
        # Token t of the flat batch belongs to batch row req_indices[t] ...
        req_indices = np.repeat(np.arange(n), num_scheduled)  # [T]
        # ... and is that request's offsets[t]-th new token, at position computed + offset.
        offsets = np.arange(total) - np.repeat(cu_num_tokens - num_scheduled, num_scheduled)
        num_computed = batch.num_computed_tokens_np[:n]
        positions = num_computed[req_indices] + offsets  # [T]
        # input_ids[t] = token_ids[req_indices[t], positions[t]]: one gather, no Python loop.
        input_ids = batch.token_ids_np[req_indices, positions].astype(np.int64)  # [T]
        slot_mapping = batch.block_table.compute_slot_mapping(req_indices, positions)  # [T]
        seq_lens = num_computed + num_scheduled  # [n]: context after this step
        query_start_loc = np.concatenate([[0], cu_num_tokens])  # [n + 1]
        seq_lens_cpu = seq_lens.tolist()

        def to_device(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(self.device)

        meta = AttentionMetadata(
            num_actual_tokens=total,
            max_query_len=int(num_scheduled.max()),
            max_seq_len=max(seq_lens_cpu),
            query_start_loc=to_device(query_start_loc.astype(np.int32)),
            seq_lens=to_device(seq_lens.astype(np.int32)),
            block_table=to_device(batch.block_table.get_block_table(n)),
            slot_mapping=to_device(slot_mapping),
            query_start_loc_cpu=query_start_loc.tolist(),
            seq_lens_cpu=seq_lens_cpu,
            req_ids=req_ids,
        )
        return to_device(input_ids), to_device(positions), meta

    # -------------------------------------------------------------------------- step
    @torch.inference_mode()
    def execute_model(
        self, so: SchedulerOutput, grammar_output: Future | GrammarOutput | None = None
    ) -> ModelRunnerOutput:
        self._update_states(so)
        batch = self.input_batch
        req_ids = list(batch.req_ids)  # condensed: row i is req_ids[i]
        if not req_ids:
            return ModelRunnerOutput([], {}, [])
        spec = so.scheduled_spec_decode_tokens
        for req_id, drafts in spec.items():
            # Drafts go right after the last real token: _prepare_inputs then reads them as the
            # inputs of the extra positions. num_tokens is unchanged, so they are not "real".
            row = batch.req_id_to_index[req_id]
            start = int(batch.num_tokens_np[row])
            batch.token_ids_np[row, start : start + len(drafts)] = drafts
        input_ids, positions, meta = self._prepare_inputs(so, req_ids)
        if self.lora_manager is not None:  # each token's adapter slot, for every LoRA layer
            self.lora_manager.set_batch(
                batch.lora_ids_np[: len(req_ids)], meta.query_start_loc_cpu, meta.max_query_len
            )
        self._execute_mm_encoder(so)  # stage 10: images in, their embeddings merged below
        inputs_embeds = self._gather_mm_embeddings(so, req_ids, input_ids)
        hidden_states = self._run_model(input_ids, positions, meta, inputs_embeds)
        if not get_pp_group().is_last_rank:  # stage 8: the last pipeline stage samples for all
            return self._follow_last_stage(req_ids)
        self._gather_prompt_logprobs(hidden_states, meta, req_ids)

        # Only requests whose scheduled tokens reach their last known token sample; a partial
        # prefill chunk just fills the KV cache.
        n = len(req_ids)
        num_tokens = batch.num_tokens_np[:n].tolist()
        rows = [i for i in range(n) if meta.seq_lens_cpu[i] >= num_tokens[i]]
        sampled: list[list[int]] = [[] for _ in req_ids]
        logprobs = None
        if rows and spec:
            sampled, logprobs = self._verify_drafts(
                hidden_states, meta, req_ids, rows, spec, grammar_output
            )
        elif rows:
            last_token_idx = [meta.query_start_loc_cpu[i + 1] - 1 for i in rows]
            logits = self.model.compute_logits(
                hidden_states[torch.tensor(last_token_idx, device=self.device)]
            ).float()
            if grammar_output is not None:  # stage 13: forbidden tokens get -inf
                apply_grammar_bitmask(
                    logits, {req_ids[i]: (j, 1) for j, i in enumerate(rows)}, grammar_output
                )
            # In a pure decode step every row samples: the batch's cached metadata is used as is.
            metadata = batch.sampling_metadata(None if len(rows) == n else rows)
            out = self.sampler(logits, metadata)
            for row, token in zip(rows, out.sampled_token_ids.tolist()):
                batch.append_token(row, token)
                sampled[row] = [token]
            if out.logprobs_tensors is not None:
                logprobs = LogprobsLists.scatter(out.logprobs_tensors.tolists(), rows, n)
        self._share_sampled(sampled)
        return ModelRunnerOutput(
            req_ids=req_ids,
            req_id_to_index=dict(batch.req_id_to_index),
            sampled_token_ids=sampled,
            logprobs=logprobs,
            spec_token_ids=self._propose_drafts(rows, n) if self.drafter else None,
            prompt_logprobs=self._finished_prompt_logprobs(req_ids, rows),
        )

    def _run_model(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden states [num_tokens, hidden]: eagerly, or padded through the static buffers."""
        set_static_forward_context(self.static_forward_context)
        if inputs_embeds is not None:
            with set_forward_context(meta):
                return self._eager_model()(input_ids, positions, inputs_embeds=inputs_embeds)
        padded = None
        if self.cudagraph_runner is not None:
            padded = self.cudagraph_runner.prepare(input_ids, positions, meta)
        if padded is None:
            with set_forward_context(meta):
                return self._forward_stage(input_ids, positions)
        size, padded_meta = padded
        with set_forward_context(padded_meta):
            return self.cudagraph_runner.forward(size)[: input_ids.shape[0]]

    # ---------------------------------------------------------------------- profiling
    def profile_run(self) -> int:
        """Run the largest step the scheduler can send; the worker reads the memory peak.

        Mirrors gpu_model_runner.profile_run: max_num_batched_tokens tokens over
        min(max_num_seqs, tokens) dummy requests, all sampling with every sampler feature on
        (penalties, top-k/top-p/min-p, max logprobs), through the real execute_model. Their KV
        goes to a small temporary cache; returns its size in bytes (live during the peak but not
        an activation). The global RNG is left as it was, so outputs do not depend on profiling.
        """
        sched = self.vllm_config.scheduler_config
        max_len, bs = self.model_config.max_model_len, self.block_size
        num_tokens = min(sched.max_num_batched_tokens, sched.max_num_seqs * max_len)
        num_reqs = min(sched.max_num_seqs, num_tokens)
        q_lens = [num_tokens // num_reqs + (i < num_tokens % num_reqs) for i in range(num_reqs)]
        worst_case = SamplingParams(
            temperature=0.8,
            top_p=0.9,
            top_k=50,
            min_p=0.05,
            repetition_penalty=1.1,
            frequency_penalty=0.1,
            presence_penalty=0.1,
            logprobs=min(self.model_config.max_logprobs, self.model_config.vocab_size),
            max_tokens=1,
        )
        new_reqs, first_block = [], 0
        for i, q_len in enumerate(q_lens):
            blocks = list(range(first_block, first_block + -(-q_len // bs)))
            first_block += len(blocks)
            new_reqs.append(NewRequestData(f"profile-{i}", [0] * q_len, [], worst_case, blocks, 0))
        scheduled = {r.req_id: q_len for r, q_len in zip(new_reqs, q_lens)}
        run = SchedulerOutput(new_reqs, CachedRequestData(), scheduled, num_tokens, set(), set())
        saved = [layer.kv_cache for layer in self.attn_layers]
        self.initialize_kv_cache(first_block)  # binds temporary caches (paged backends only)
        dummy_kv_bytes = sum(
            layer.kv_cache.nbytes
            for layer, old in zip(self.attn_layers, saved)
            if layer.kv_cache is not None and layer.kv_cache is not old
        )
        cuda_devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda_devices):
                self.execute_model(run)
        finally:
            # The dummy requests finish: their rows, states (and naive caches) go away.
            done = SchedulerOutput([], CachedRequestData(), {}, 0, set(scheduled), set())
            self._update_states(done)
            for layer, old in zip(self.attn_layers, saved):
                layer.kv_cache = old
        return dummy_kv_bytes


def compute_slot_mapping(block_ids: list[int], start: int, end: int, block_size: int) -> list[int]:
    """KV slot of each position in [start, end): its physical block * block_size + offset."""
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(start, end)]
