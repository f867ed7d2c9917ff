"""Which decoder layers a pipeline stage owns.

Stage 8. Mirrors vllm/distributed/utils.py (get_pp_indices). Layers are dealt out as evenly as
possible; when they do not divide, the extra layers go to the stages just before the last one,
because the last stage also runs the final norm and the LM head (vLLM's rule, without its
VLLM_PP_LAYER_PARTITION override). Next: parallel_state.py.
"""

from __future__ import annotations


def get_pp_indices(num_hidden_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    """[start, end) of the layers on stage `pp_rank` of `pp_size`."""
    if not 1 <= pp_size <= num_hidden_layers:
        raise ValueError(
            f"pipeline_parallel_size must be in [1, num_hidden_layers={num_hidden_layers}] "
            f"(every stage needs a layer), got {pp_size}"
        )
    if not 0 <= pp_rank < pp_size:
        raise ValueError(f"pp_rank must be in [0, {pp_size}), got {pp_rank}")
    partitions = [num_hidden_layers // pp_size] * pp_size
    # e.g. 30 layers on 4 stages: [7, 8, 8, 7] — the remainder skips the last stage.
    for i in range(2, num_hidden_layers % pp_size + 2):
        partitions[-i % pp_size] += 1
    start = sum(partitions[:pp_rank])
    return start, start + partitions[pp_rank]
