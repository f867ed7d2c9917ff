"""The model runner's multimodal half: run the vision encoder, gather its rows for this step.

Stage 10. Mirrors the multimodal parts of vllm/v1/worker/gpu_model_runner.py (`_execute_mm_encoder`,
`_gather_mm_embeddings`). A mixin of ModelRunner. Each step, before the forward pass:
  1. drop the encoder outputs the scheduler evicted (`free_encoder_mm_hashes`);
  2. encode the images the scheduler chose (`scheduled_encoder_inputs`), all in one batch, and
     keep each output under the image's content hash (`encoder_cache`);
  3. for every request whose scheduled token span [num_computed, num_computed + n) meets an
     image's placeholder span, take the matching rows of that image's cached output: a chunked
     prefill may cut a span anywhere, so a step may use rows 0..9 and the next rows 10..15;
  4. embed the flat batch's token ids and overwrite the placeholder positions with those rows.
Decode steps (no placeholder in the batch) skip all of it and run on token ids as before.
Next: entrypoints/chat_utils.py (image content parts).
"""

from __future__ import annotations

import numpy as np
import torch

from vllm_mini.compilation.wrapper import CompiledModel
from vllm_mini.core.sched.output import SchedulerOutput


class MultiModalRunnerMixin:
    def _execute_mm_encoder(self, so: SchedulerOutput) -> None:
        """Steps 1-2: evict, then encode this step's new images into `encoder_cache`."""
        for mm_hash in so.free_encoder_mm_hashes:
            self.encoder_cache.pop(mm_hash, None)
        todo = {}
        for req_id, indices in so.scheduled_encoder_inputs.items():
            for i in indices:
                feature = self.requests[req_id].mm_features[i]
                if feature.identifier not in self.encoder_cache:
                    todo[feature.identifier] = feature  # one run per distinct picture
        if not todo:
            return
        # pixel_values: [num_images, 3, H, W] -> embeddings [num_images, tokens, hidden]
        pixels = torch.stack([f.data["pixel_values"] for f in todo.values()])
        pixels = pixels.to(self.device, self.model_config.dtype)
        embeds = self._eager_model().get_multimodal_embeddings(pixels)
        for feature, rows in zip(todo.values(), embeds):
            if rows.shape[0] != feature.num_embeds:
                raise RuntimeError(
                    f"the encoder gave {rows.shape[0]} embeddings for an image with "
                    f"{feature.num_embeds} placeholder tokens"
                )
            self.encoder_cache[feature.identifier] = rows

    def _gather_mm_embeddings(
        self, so: SchedulerOutput, req_ids: list[str], input_ids: torch.Tensor
    ) -> torch.Tensor | None:
        """Steps 3-4: inputs_embeds [T, hidden] for the flat batch, or None if it has no image."""
        if not self.encoder_cache:
            return None  # a text-only model, or no image yet: nothing to merge (no per-row loop)
        rows: list[torch.Tensor] = []
        is_mm = np.zeros(input_ids.shape[0], dtype=bool)  # [T]
        flat_start = 0
        for i, req_id in enumerate(req_ids):
            n = so.num_scheduled_tokens[req_id]
            start = int(self.input_batch.num_computed_tokens_np[i])
            for feature in self.requests[req_id].mm_features:
                overlap = feature.mm_position.overlap(start, start + n)
                if overlap is None:
                    continue
                lo, hi = overlap
                offset = feature.mm_position.offset
                rows.append(self.encoder_cache[feature.identifier][lo - offset : hi - offset])
                is_mm[flat_start + lo - start : flat_start + hi - start] = True
            flat_start += n
        if not rows:
            return None
        mask = torch.from_numpy(is_mm).to(self.device)
        return self._eager_model().embed_input_ids(input_ids, torch.cat(rows), mask)

    def _eager_model(self) -> torch.nn.Module:
        """The model itself: steps with image rows run eagerly, outside compiled graphs."""
        return self.model.model if isinstance(self.model, CompiledModel) else self.model
