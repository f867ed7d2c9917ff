"""LoRAModelManager: adapters on disk -> CPU cache -> slots, and each step's token mapping.

Stage 9. Mirrors vllm/lora/model_manager.py (slots, activation, LRU) and worker_manager.py (load
from disk on demand). Three tiers, like a memory hierarchy:
- disk: every adapter a request named, by its LoRARequest (path), so it can be reloaded;
- CPU cache: up to max_cpu_loras loaded and checked LoRAModels, least recently used out first;
- slots: max_loras rows of every LoRA layer's stacks, the adapters a step can use.
Each step `set_batch` makes sure the step's adapters sit in slots (evicting the least recently
used slot whose adapter this step does not need; the scheduler guarantees at most max_loras
distinct adapters per step) and hands the PunicaWrapper each token's slot.
Next: worker/model_runner.py (where the runner calls set_batch).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from vllm_mini.config.lora import LoRAConfig
from vllm_mini.lora.layers import LinearWithLoRA, wrap_lora_layers
from vllm_mini.lora.lora_model import LoRAModel
from vllm_mini.lora.punica_wrapper import PunicaWrapper
from vllm_mini.lora.request import LoRARequest


class LoRAModelManager:
    def __init__(self, model: nn.Module, config: LoRAConfig, device: torch.device) -> None:
        self.config = config
        self.punica = PunicaWrapper(device)
        self.layers: dict[str, LinearWithLoRA] = wrap_lora_layers(
            model, config.max_loras, config.max_lora_rank, self.punica
        )
        self.expected_shapes = {
            (name, i): (layer.base_layer.input_size, n)
            for name, layer in self.layers.items()
            for i, n in enumerate(layer.slices)
        }
        self.requests: dict[int, LoRARequest] = {}  # every adapter known, by id
        self.cpu_cache: OrderedDict[int, LoRAModel] = OrderedDict()
        self.slots: list[int | None] = [None] * config.max_loras  # adapter id per slot
        self._slot_used: list[int] = [0] * config.max_loras  # step of last use, for LRU
        self._step = 0
        self.num_slot_loads = 0  # adapters copied into a slot (tests and benchmarks read it)

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, request: LoRARequest) -> None:
        """Load and check an adapter (errors name the problem); a known id is a no-op."""
        known = self.requests.get(request.lora_int_id)
        if known is not None:
            if known.lora_name != request.lora_name or known.lora_path != request.lora_path:
                raise ValueError(
                    f"lora_int_id {request.lora_int_id} is already {known.lora_name!r} "
                    f"({known.lora_path}); give {request.lora_name!r} another id"
                )
            return
        self._load(request)
        self.requests[request.lora_int_id] = request

    def remove_adapter(self, lora_int_id: int) -> bool:
        found = self.requests.pop(lora_int_id, None) is not None
        self.cpu_cache.pop(lora_int_id, None)
        for slot, lora_id in enumerate(self.slots):
            if lora_id == lora_int_id:
                self.slots[slot] = None
                for layer in self.layers.values():
                    layer.set_lora(slot, [None] * len(layer.slices))
        return found

    def list_adapters(self) -> list[LoRARequest]:
        return list(self.requests.values())

    def _load(self, request: LoRARequest) -> LoRAModel:
        lora = self.cpu_cache.get(request.lora_int_id)
        if lora is None:
            lora = LoRAModel.from_local_checkpoint(
                request.lora_path,
                request.lora_int_id,
                self.config.max_lora_rank,
                self.expected_shapes,
            )
            self.cpu_cache[request.lora_int_id] = lora
            while len(self.cpu_cache) > self.config.max_cpu_loras:
                self.cpu_cache.popitem(last=False)  # the least recently used
        self.cpu_cache.move_to_end(request.lora_int_id)
        return lora

    # ---------------------------------------------------------------------- steps
    def _activate(self, lora_ids: set[int]) -> dict[int, int]:
        """Adapter id -> slot for this step's adapters, loading the missing ones into slots."""
        self._step += 1
        mapping = {}
        for lora_id in sorted(lora_ids):
            if lora_id in self.slots:
                slot = self.slots.index(lora_id)
            else:
                free = [s for s, i in enumerate(self.slots) if i is None]
                victims = [s for s, i in enumerate(self.slots) if i not in lora_ids]
                if not free and not victims:
                    raise RuntimeError(
                        f"a step uses more than max_loras={self.config.max_loras} adapters"
                    )
                slot = free[0] if free else min(victims, key=lambda s: self._slot_used[s])
                lora = self._load(self.requests[lora_id])
                for name, layer in self.layers.items():
                    layer.set_lora(
                        slot, [lora.layers.get((name, i)) for i in range(len(layer.slices))]
                    )
                self.slots[slot] = lora_id
                self.num_slot_loads += 1
            self._slot_used[slot] = self._step
            mapping[lora_id] = slot
        return mapping

    def set_batch(
        self, row_lora_ids: np.ndarray, query_start_loc: list[int], max_query_len: int
    ) -> None:
        """row_lora_ids[i]: request i's adapter id (0: none); its tokens are a run of the batch."""
        counts = np.diff(np.asarray(query_start_loc))
        active = {int(i) for i in row_lora_ids if i > 0}
        if not active:
            self.punica.has_lora = False
            return
        mapping = self._activate(active)
        row_slots = np.array([mapping.get(int(i), -1) for i in row_lora_ids], dtype=np.int64)
        self.punica.update_metadata(
            np.repeat(row_slots, counts),
            query_start_loc,
            max_query_len,
            self.config.max_loras,
            self.config.max_lora_rank,
        )
