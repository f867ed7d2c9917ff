"""Encoder cache bookkeeping: which images' encoder outputs the model runner holds, and room.

Stage 10. Mirrors vllm/v1/core/encoder_cache_manager.py. A prompt's image is encoded by the vision
tower in one shot, but its placeholder tokens may be prefilled over several steps (chunked
prefill), so its output must outlive the step that computed it. The runner keeps the tensors
(`encoder_cache` in worker/multimodal_runner.py); this class, on the scheduler's side, decides
what may be kept, counted in embeddings (one per placeholder token):
- entries are named by the image's content hash, so a second request with the same picture
  reuses the output (a hit) and the encoder runs once;
- an entry lives while any request references it; unreferenced entries stay as "freeable" and
  are evicted oldest first only when room is needed, so a preempted request (or the next prompt
  with the same picture) still finds them;
- evicted hashes go to the runner in the next SchedulerOutput, which drops the tensors.
`try_schedule_encoder_inputs` is the scheduler's per-request decision (vLLM's
Scheduler._try_schedule_encoder_inputs): which images this step's token span needs encoded, and
how far the span may go when the encoder budget or the cache runs out. Next:
worker/multimodal_runner.py.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from vllm_mini.config import VllmConfig
from vllm_mini.multimodal import MULTIMODAL_REGISTRY

if TYPE_CHECKING:
    from vllm_mini.request import Request


class EncoderCacheManager:
    def __init__(self, cache_size: int) -> None:
        self.cache_size = cache_size  # in embeddings
        self.num_free_slots = cache_size
        # mm_hash -> ids of the requests that reference it (empty: freeable).
        self.cached: dict[str, set[str]] = {}
        # Unreferenced entries, oldest first, with their size: evicted only when room is needed.
        self.freeable: OrderedDict[str, int] = OrderedDict()
        self.freed: list[str] = []  # evicted since the last SchedulerOutput
        self.num_encoder_runs = 0  # entries ever allocated = images the encoder ran on

    @staticmethod
    def compute_budget(vllm_config: VllmConfig) -> int:
        """Embeddings the encoder may produce per step, also the cache size (vLLM's defaults in
        compute_mm_encoder_budget: the step's token budget, but never less than one image, or a
        large image could never run)."""
        per_item = MULTIMODAL_REGISTRY.get_max_tokens_per_item(vllm_config.model_config)
        if per_item == 0:
            return 0  # a text-only model
        return max(vllm_config.scheduler_config.max_num_batched_tokens, per_item)

    @property
    def num_freeable_slots(self) -> int:
        return self.num_free_slots + sum(self.freeable.values())

    def check_and_update_cache(self, request: Request, input_id: int) -> bool:
        """Is this image's output cached? If so, `request` now references it."""
        mm_hash = request.mm_features[input_id].identifier
        if mm_hash not in self.cached:
            return False
        if not self.cached[mm_hash]:
            self.freeable.pop(mm_hash)  # referenced again: no longer evictable
        self.cached[mm_hash].add(request.request_id)
        return True

    def can_allocate(
        self, request: Request, input_id: int, encoder_budget: int, num_planned: int
    ) -> bool:
        """Room for this image's output (beyond `num_planned` embeddings already chosen this
        step) within the step's encoder budget? Evicts freeable entries if that makes room."""
        num_embeds = request.mm_features[input_id].num_embeds
        if num_embeds > encoder_budget:
            return False
        needed = num_embeds + num_planned
        if needed > self.num_freeable_slots:
            return False
        while needed > self.num_free_slots:
            mm_hash, size = self.freeable.popitem(last=False)
            del self.cached[mm_hash]
            self.freed.append(mm_hash)
            self.num_free_slots += size
        return True

    def allocate(self, request: Request, input_id: int) -> None:
        feature = request.mm_features[input_id]
        if feature.identifier in self.cached:  # chosen twice this step: one output serves both
            self.check_and_update_cache(request, input_id)
            return
        self.cached[feature.identifier] = {request.request_id}
        self.num_free_slots -= feature.num_embeds
        self.num_encoder_runs += 1

    def free(self, request: Request, upto: int | None = None) -> None:
        """Drop `request`'s references (outputs stay cached, freeable): all of them when it
        finishes or is preempted; with `upto`, those of images whose whole placeholder span lies
        before position `upto`, whose rows are in the KV cache and are never read again by
        this request. Holding those would let two half-prefilled prompts starve each other."""
        for feature in request.mm_features:
            if upto is not None and feature.mm_position.end > upto:
                continue
            refs = self.cached.get(feature.identifier)
            if refs is None or request.request_id not in refs:
                continue
            refs.discard(request.request_id)
            if not refs:
                self.freeable[feature.identifier] = feature.num_embeds

    def get_freed_mm_hashes(self) -> list[str]:
        freed, self.freed = self.freed, []
        return freed


def try_schedule_encoder_inputs(
    manager: EncoderCacheManager,
    request: Request,
    num_computed: int,
    num_new: int,
    encoder_budget: int,
    num_planned: int,
) -> tuple[list[int], int, int]:
    """Which of `request`'s images must be encoded for tokens [num_computed, num_computed +
    num_new), and how many of those tokens may run: the span stops before an image that does not
    fit (its placeholder tokens cannot run without their embeddings). Returns (image indices to
    encode, num_new, encoder budget left)."""
    chosen: list[int] = []
    for i, feature in enumerate(request.mm_features):
        span = feature.mm_position
        if span.offset >= num_computed + num_new:
            break  # images are in prompt order: the rest lie beyond this step
        if span.end <= num_computed:
            continue  # its tokens' KV is computed (or came from the prefix cache)
        if manager.check_and_update_cache(request, i):
            continue  # encoded before: the runner reads the cached output
        if any(request.mm_features[j].identifier == feature.identifier for j in chosen):
            continue  # the same picture twice in one prompt is encoded once
        planned = num_planned + sum(request.mm_features[j].num_embeds for j in chosen)
        if not manager.can_allocate(request, i, encoder_budget, planned):
            num_new = max(0, span.offset - num_computed)  # run up to the image, not into it
            break
        chosen.append(i)
        encoder_budget -= feature.num_embeds
    return chosen, num_new, encoder_budget


class EncoderSchedule:
    """One step's encoder decisions, made request by request while the scheduler spends its
    token budget, and allocated in the cache only for requests that stay scheduled (a request
    preempted later in the same step must not leave an entry the runner never computed)."""

    def __init__(self, manager: EncoderCacheManager, budget: int) -> None:
        self.manager = manager
        self.budget = budget
        self.inputs: dict[str, list[int]] = {}
        self.num_planned = 0

    def schedule(self, request: Request, num_computed: int, num_new: int) -> int:
        """Choose `request`'s images to encode; return how many tokens it may run."""
        if not request.mm_features:
            return num_new
        chosen, num_new, self.budget = try_schedule_encoder_inputs(
            self.manager, request, num_computed, num_new, self.budget, self.num_planned
        )
        if chosen:
            self.inputs[request.request_id] = chosen
            self.num_planned += sum(request.mm_features[i].num_embeds for i in chosen)
        return num_new

    def commit(
        self, requests: dict[str, Request], scheduled: dict[str, int]
    ) -> dict[str, list[int]]:
        """req_id -> image indices to encode, for the requests scheduled in the end."""
        inputs = {r: chosen for r, chosen in self.inputs.items() if r in scheduled}
        for req_id, chosen in inputs.items():
            for i in chosen:
                self.manager.allocate(requests[req_id], i)
        return inputs
