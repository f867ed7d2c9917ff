"""Draft-model proposer: a small model runs k steps ahead of the target, in the same KV blocks.

Stage 11. Mirrors vllm/v1/spec_decode/draft_model.py (and the shape of eagle.py, its sibling).
The draft is an ordinary model of the same vocabulary: a smaller checkpoint, or the target's own
first `num_draft_layers` layers ("self-speculation": the early layers already predict the easy
tokens). It keeps its own KV cache, one tensor per draft layer, laid out exactly like the
target's and addressed through the *same* block tables: position p of a request lives in the same
slot for both models, so the scheduler allocates once (with `num_speculative_tokens` slots of
lookahead for the draft's speculative positions) and frees once.

Each engine step, after the target verified the previous drafts, `propose`:
1. catches up: runs the draft over the request's tokens it has not seen yet (the whole prompt
   the first time, later the accepted drafts and the target's token) and samples draft 1 from
   the last position;
2. feeds each draft back in, one token per request per step, k - 1 more times.
Only real tokens count as computed afterwards: the KV the draft wrote for its own drafts sits
beyond that and is overwritten by the next catch-up, like the target's rejected drafts.

Random requests sample their drafts from the draft's distribution q after the request's own
temperature, top-k, top-p and min-p; q is kept for the rejection sampler, whose accept test
min(1, p/q) and residual max(p - q, 0) are exact only for drafts drawn from the q it is given.
Greedy requests take the draft's argmax. Next: model_executor/layers/rejection_sampler.py.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import torch

from vllm_mini.attention import Attention
from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.config import CompilationConfig, ModelConfig, VllmConfig
from vllm_mini.core.kv_cache_utils import get_kv_cache_shape, kv_bytes_per_block
from vllm_mini.forward_context import set_forward_context
from vllm_mini.model_executor.layers.sampler import apply_top_k_top_p_min_p
from vllm_mini.model_executor.model_loader import get_model
from vllm_mini.model_executor.sampling_metadata import SamplingMetadata

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def draft_vllm_config(target: VllmConfig) -> VllmConfig:
    """The target's config with the draft's model: same device, dtype, cache and length."""
    spec = target.speculative_config
    tm = target.model_config
    model_config = ModelConfig(
        model=spec.model or tm.model,
        dtype=tm.dtype,
        seed=tm.seed,
        max_model_len=tm.max_model_len,
        max_logprobs=tm.max_logprobs,
        quantization=tm.quantization if spec.model is None else None,
        enforce_eager=True,
    )
    if spec.num_draft_layers is not None:
        hf = model_config.hf_config
        if spec.num_draft_layers > hf.num_hidden_layers:
            raise ValueError(
                f"speculative_config.num_draft_layers ({spec.num_draft_layers}) is more than the "
                f"draft checkpoint's {hf.num_hidden_layers} layers"
            )
        model_config.hf_config = type(hf).from_dict(
            {**hf.to_dict(), "num_hidden_layers": spec.num_draft_layers}
        )
    spec.verify_with_models(tm, model_config)
    return dataclasses.replace(
        target,
        model_config=model_config,
        speculative_config=None,
        # The draft runs eagerly: its layers share the target's names, which the compiled
        # attention op would look up in one shared table.
        compilation_config=CompilationConfig(mode=0, cudagraph_mode="NONE"),
    )


class DraftModelProposer:
    def __init__(self, target: VllmConfig) -> None:
        self.vllm_config = draft_vllm_config(target)
        spec = target.speculative_config
        self.k = spec.num_speculative_tokens
        self.block_size = target.cache_config.block_size
        self.device = target.device_config.torch_device
        self.model = None
        self.attn_layers: list[Attention] = []
        # Per request: how many of its real tokens the draft's KV already holds.
        self.num_computed: dict[str, int] = {}
        # Per request: the distributions its last drafts were sampled from ([s, vocab]).
        self.draft_probs: dict[str, torch.Tensor] = {}

    def load_model(self) -> None:
        keep = self.vllm_config.model_config.num_layers

        def wanted(name: str) -> bool:  # a truncated draft skips the checkpoint's later layers
            m = _LAYER.search(name)
            return m is None or int(m.group(1)) < keep

        self.model = get_model(self.vllm_config, keep_weight=wanted)
        self.attn_layers = [m for m in self.model.modules() if isinstance(m, Attention)]

    def kv_bytes_per_block(self) -> int:
        mc = self.vllm_config.model_config
        return kv_bytes_per_block(
            mc.num_layers, self.block_size, mc.num_kv_heads, mc.head_size, mc.dtype
        )

    def initialize_kv_cache(self, num_blocks: int) -> None:
        for layer in self.attn_layers:
            shape = get_kv_cache_shape(
                num_blocks, self.block_size, layer.num_kv_heads, layer.head_size
            )
            layer.kv_cache = torch.zeros(
                shape, dtype=self.vllm_config.model_config.dtype, device=self.device
            )

    def remove_requests(self, req_ids: set[str]) -> None:
        """Finished or preempted: a preempted request comes back with its KV recomputed."""
        for req_id in req_ids:
            self.num_computed.pop(req_id, None)
            self.draft_probs.pop(req_id, None)

    def take_draft_probs(self, req_id: str, num_drafts: int) -> torch.Tensor | None:
        probs = self.draft_probs.pop(req_id, None)
        return None if probs is None else probs[:num_drafts]

    def propose_batch(self, batch, rows: list[int], rooms: list[int]) -> list[list[int]]:
        """The proposers' common entry (the runner's InputBatch, rows that sampled, caps)."""
        n = batch.num_reqs
        md = batch.sampling_metadata(None if len(rows) == n else rows)
        return self.propose(
            list(batch.req_ids[:n]),
            batch.token_ids_np,
            batch.num_tokens_np[:n].tolist(),
            batch.block_table.get_block_table(n),
            batch.block_table.compute_slot_mapping,
            rows,
            rooms,
            md,
        )

    @torch.inference_mode()
    def propose(
        self,
        req_ids: list[str],
        token_ids: np.ndarray,
        num_tokens: list[int],
        block_table: np.ndarray,
        slot_mapping_fn,
        rows: list[int],
        rooms: list[int],
        md: SamplingMetadata,
    ) -> list[list[int]]:
        """Drafts for batch rows `rows` (their sampling metadata is `md`, row j = rows[j]).

        token_ids[i, :num_tokens[i]] are row i's real tokens; rooms[j] caps row rows[j]'s drafts;
        slot_mapping_fn(req_indices, positions) is the batch block table's slot lookup.
        """
        rooms = [min(room, self.k) for room in rooms]
        active = [j for j, room in enumerate(rooms) if room > 0]
        drafts: list[list[int]] = [[] for _ in rows]
        if not active:
            return drafts
        batch_rows = [rows[j] for j in active]
        starts = [self.num_computed.get(req_ids[i], 0) for i in batch_rows]
        ends = [num_tokens[i] for i in batch_rows]
        # 1. Catch up on every real token the draft has not seen; sample from the last position.
        inputs = [token_ids[i, s:e] for i, s, e in zip(batch_rows, starts, ends)]
        positions = [np.arange(s, e) for s, e in zip(starts, ends)]
        sampled, probs = self._step(batch_rows, inputs, positions, block_table, slot_mapping_fn,
                                    md, active)  # fmt: skip
        steps = [[t] for t in sampled]
        step_probs = [[p] for p in probs]
        # 2. Feed each draft back in, one position further each time.
        for step in range(1, max(rooms[j] for j in active)):
            inputs = [np.array([s[-1]]) for s in steps]
            positions = [np.array([e + step - 1]) for e in ends]
            sampled, probs = self._step(
                batch_rows, inputs, positions, block_table, slot_mapping_fn, md, active
            )
            for s, p, t, q in zip(steps, step_probs, sampled, probs):
                s.append(t)
                p.append(q)
        for n, (j, i) in enumerate(zip(active, batch_rows)):
            room = rooms[j]
            drafts[j] = steps[n][:room]
            self.num_computed[req_ids[i]] = ends[n]
            if step_probs[n][0] is not None:
                self.draft_probs[req_ids[i]] = torch.stack(step_probs[n][:room])
        return drafts

    def _step(self, batch_rows, inputs, positions, block_table, slot_mapping_fn, md, active):
        """One draft forward over several rows' new tokens; a sample from each row's last one."""
        q_lens = [len(x) for x in inputs]
        seq_lens = [int(p[-1]) + 1 for p in positions]
        flat_pos = np.concatenate(positions)
        req_indices = np.repeat(np.array(batch_rows), q_lens)
        cu = np.cumsum([0, *q_lens])

        def dev(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

        meta = AttentionMetadata(
            num_actual_tokens=int(cu[-1]),
            max_query_len=max(q_lens),
            max_seq_len=max(seq_lens),
            query_start_loc=dev(cu.astype(np.int32)),
            seq_lens=dev(np.array(seq_lens, dtype=np.int32)),
            block_table=dev(block_table[batch_rows]),
            slot_mapping=dev(slot_mapping_fn(req_indices, flat_pos)),
            query_start_loc_cpu=cu.tolist(),
            seq_lens_cpu=seq_lens,
            req_ids=[str(i) for i in batch_rows],
        )
        ids = dev(np.concatenate(inputs).astype(np.int64))
        with set_forward_context(meta):
            hidden = self.model(ids, dev(flat_pos.astype(np.int64)))
        logits = self.model.compute_logits(hidden[dev(cu[1:] - 1)]).float()
        return self._sample(logits, md, active)

    @staticmethod
    def _sample(logits: torch.Tensor, md: SamplingMetadata, active: list[int]):
        """Draft tokens: argmax for greedy rows; a sample of q for random rows (q returned)."""
        greedy = md.greedy_mask.tolist()
        tokens = logits.argmax(dim=-1).tolist()
        probs: list[torch.Tensor | None] = [None] * len(active)
        random = [n for n, j in enumerate(active) if not greedy[j]]
        if random:
            idx = torch.tensor([active[n] for n in random], device=logits.device)
            sub = dataclasses.replace(
                md,
                top_k=None if md.top_k is None else md.top_k[idx],
                top_p=None if md.top_p is None else md.top_p[idx],
                min_p=None if md.min_p is None else md.min_p[idx],
            )
            scaled = logits[random] / md.temperature[idx].unsqueeze(1)
            q = apply_top_k_top_p_min_p(scaled, sub).softmax(dim=-1)
            for r, n in enumerate(random):
                gen = md.generators.get(active[n])
                race = torch.empty_like(q[r]).exponential_(generator=gen)
                tokens[n] = int(q[r].div(race).argmax())
                probs[n] = q[r]
        return tokens, probs
