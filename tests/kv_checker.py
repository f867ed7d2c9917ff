"""A shadow of the paged KV cache that proves every request reads only its own prefix.

The engine's outputs can look plausible while attention reads the wrong slots (a stale prefix-cache
hit, a block handed to two requests, a wrong slot mapping). This checker keeps, for every KV slot,
the token prefix whose K/V the forward pass last wrote there: slot -> tuple(tokens[: pos + 1]).
Each step it hooks the model runner's `set_forward_context` (the metadata every attention layer
sees), applies the step's writes (`slot_mapping`) and then checks every read: for each scheduled
request and each position of its context, the slot that its block table points at must hold
exactly that request's tokens up to that position. The truth comes from the scheduler's own
`Request.all_token_ids`, not from the runner, followed by the draft tokens the step verifies
(speculative decoding): a rejected draft's KV stays in its slot, and the checker proves that
nobody reads it before the real token's KV overwrites it.

Usage: `with KVReadChecker(llm.llm_engine) as checker: llm.generate(...)`; `checker.steps` counts
the steps checked. Paged backends only (the naive backend has no slots).
"""

from __future__ import annotations

import contextlib
from typing import Any

from vllm_mini.worker import model_runner as model_runner_module


class KVReadChecker:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.block_size = engine.vllm_config.cache_config.block_size
        self.slot_contents: dict[int, tuple[int, ...]] = {}
        self.steps = 0
        self._original = None

    def __enter__(self) -> KVReadChecker:
        self._original = model_runner_module.set_forward_context
        original = self._original

        @contextlib.contextmanager
        def checked_forward_context(meta, *args, **kwargs):
            self.check_step(meta)
            with original(meta, *args, **kwargs):
                yield

        model_runner_module.set_forward_context = checked_forward_context
        return self

    def __exit__(self, *exc: object) -> None:
        model_runner_module.set_forward_context = self._original

    def _requests(self) -> dict[str, Any]:
        return self.engine.engine_core.scheduler.requests

    def check_step(self, meta: Any) -> None:
        requests = self._requests()
        so = self.engine.engine_core.last_scheduler_output
        spec = so.scheduled_spec_decode_tokens if so is not None else {}
        bs = self.block_size
        starts = list(meta.query_start_loc_cpu)
        seq_lens = list(meta.seq_lens_cpu)
        slot_mapping = meta.slot_mapping.tolist()
        block_table = meta.block_table.tolist()
        rows = []
        for i, req_id in enumerate(meta.req_ids):
            tokens = requests[req_id].all_token_ids + spec.get(req_id, [])
            q_len = starts[i + 1] - starts[i]
            seq_len = seq_lens[i]
            assert seq_len <= len(tokens), f"{req_id}: context {seq_len} > {len(tokens)} tokens"
            rows.append((req_id, tokens, q_len, seq_len, block_table[i]))
            # Writes: this step's tokens go to the slots of their positions.
            for j in range(q_len):
                pos = seq_len - q_len + j
                slot = slot_mapping[starts[i] + j]
                expected = block_table[i][pos // bs] * bs + pos % bs
                assert slot == expected, (
                    f"{req_id} pos {pos}: slot_mapping {slot} != block table slot {expected}"
                )
                self.slot_contents[slot] = tuple(tokens[: pos + 1])
        # Reads (after every write of the step, as each layer writes before it attends).
        for req_id, tokens, _q_len, seq_len, table in rows:
            for pos in range(seq_len):
                slot = table[pos // bs] * bs + pos % bs
                held = self.slot_contents.get(slot)
                if held != tuple(tokens[: pos + 1]):
                    what = "never written" if held is None else f"KV of another prefix {held[-4:]}"
                    raise AssertionError(
                        f"step {self.steps}: request {req_id} reads position {pos} from slot "
                        f"{slot}, which holds {what} (expected the prefix ending "
                        f"{tuple(tokens[max(0, pos - 3) : pos + 1])})"
                    )
        self.steps += 1
