"""Static buffers, padding to capture sizes, and CUDA-graph capture/replay of decode steps.

Stage 6. Mirrors the CUDA-graph parts of vllm/v1/worker/gpu_model_runner.py (persistent input
buffers, `_dummy_run`, `capture_model`) and vllm/compilation/cuda_graph.py (CUDAGraphWrapper),
reduced to FULL_DECODE_ONLY. A CUDA graph records kernel launches with their *pointers and
shapes* frozen, then replays them all with one launch. So every input must live in a tensor that
never moves (a persistent buffer, written in place each step) and has one of a few fixed sizes:
a decode batch of n requests is padded up to the nearest capture size, and the outputs sliced
back to n. Padded rows write their KV to slot -1 (every reshape_and_cache kernel skips negative
slots) and never reach the sampler.

Inside the captured region nothing may depend on the step's values from the host: the metadata
holds fixed Python numbers (max_query_len = 1, max_seq_len = max_model_len) and the tensors
are views of the buffers. On CPU there is nothing to capture: the same buffers, padding and
dispatch run eagerly, which is what the CPU tests check. Next: worker/model_runner.py.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import replace

import torch
from torch import nn

from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.forward_context import set_forward_context
from vllm_mini.logger import init_logger

logger = init_logger(__name__)

PAD_SLOT_ID = -1  # a KV slot no kernel writes (vLLM uses the same value)


def padded_batch_size(num_reqs: int, capture_sizes: list[int]) -> int | None:
    """The smallest capture size >= num_reqs, or None when the batch is above the largest."""
    i = bisect.bisect_left(capture_sizes, num_reqs)
    return capture_sizes[i] if i < len(capture_sizes) else None


class StaticInputBuffers:
    """Tensors allocated once at the largest capture size; each step writes into them in place."""

    # Made as inference tensors, like every tensor of a step (the runner works under
    # torch.inference_mode): dynamo guards on a tensor's dispatch keys, so a buffer slice that
    # carried autograd's ADInplaceOrView key where the prefill inputs did not would recompile.
    @torch.inference_mode()
    def __init__(self, max_size: int, max_blocks_per_req: int, device: torch.device) -> None:
        self.max_size = max_size
        self.input_ids = torch.zeros(max_size, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_size, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((max_size,), PAD_SLOT_ID, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(max_size, dtype=torch.int32, device=device)
        self.block_table = torch.zeros(
            max_size, max_blocks_per_req, dtype=torch.int32, device=device
        )
        # A decode step has one token per request, so row i's token is always at index i.
        self.query_start_loc = torch.arange(max_size + 1, dtype=torch.int32, device=device)

    @torch.inference_mode()
    def fill(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, size: int
    ) -> None:
        """Copy a decode step of n = len(input_ids) requests into rows [0, n); pad [n, size)."""
        n = input_ids.shape[0]
        self.input_ids[:n].copy_(input_ids)
        self.input_ids[n:size].zero_()
        self.positions[:n].copy_(positions)
        self.positions[n:size].zero_()
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:size].fill_(PAD_SLOT_ID)  # padded rows write no KV
        self.seq_lens[:n].copy_(meta.seq_lens)
        # A padded row attends over one key: its block-0 slot 0, read and thrown away. (A
        # length of 0 would leave some kernels dividing by a zero softmax sum.)
        self.seq_lens[n:size].fill_(1)
        width = meta.block_table.shape[1]
        self.block_table[:n, :width].copy_(meta.block_table)
        self.block_table[n:size].zero_()

    def metadata(self, meta: AttentionMetadata, size: int, max_seq_len: int) -> AttentionMetadata:
        """The step's metadata over `size` rows of the buffers, with fixed host-side numbers.

        `req_ids`, `query_start_loc_cpu` and `seq_lens_cpu` keep the real rows only: they are
        for the Python side (the KV checker, non-graph backends) and are never read on replay.
        """
        n = meta.num_actual_tokens
        return replace(
            meta,
            num_actual_tokens=size,
            max_query_len=1,
            max_seq_len=max_seq_len,
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size],
            block_table=self.block_table[:size],
            slot_mapping=self.slot_mapping[:size],
            query_start_loc_cpu=list(range(n + 1)),
            seq_lens_cpu=list(meta.seq_lens_cpu),
        )


class CUDAGraphRunner:
    """Runs decode steps through the static buffers; replays a captured graph where one exists.

    `run` returns None when the step cannot take this path (not a pure decode, or more requests
    than the largest capture size): the caller then runs the model eagerly, as vLLM does.
    """

    def __init__(
        self,
        model: nn.Module,
        capture_sizes: list[int],
        max_blocks_per_req: int,
        max_model_len: int,
        device: torch.device,
        capture_enabled: bool,
    ) -> None:
        self.model = model
        self.capture_sizes = sorted(capture_sizes)
        self.max_model_len = max_model_len
        self.device = device
        self.buffers = StaticInputBuffers(self.capture_sizes[-1], max_blocks_per_req, device)
        # Real graphs only on CUDA with a graph-safe backend; elsewhere the buffers run eagerly.
        self.capture_enabled = capture_enabled and device.type == "cuda"
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # each graph's output tensor, reused on replay
        self.num_padded_steps = 0  # steps that took this path (tests read these)
        self.num_fallback_steps = 0
        self.pool = None

    def _max_seq_len(self, meta: AttentionMetadata) -> int:
        # A captured kernel's launch shape is frozen: size it for any context. Eagerly, the real
        # maximum avoids over-sized scratch space in the CPU kernel.
        return self.max_model_len if self.capture_enabled else meta.max_seq_len

    def prepare(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> tuple[int, AttentionMetadata] | None:
        """Fill the buffers for this step: (padded size, its metadata), or None to run eagerly.

        The runner then calls `forward(size)` under `set_forward_context(metadata)`.
        """
        n = input_ids.shape[0]
        size = padded_batch_size(n, self.capture_sizes)
        if meta.max_query_len != 1 or size is None:
            self.num_fallback_steps += 1  # a prefill, or more requests than the largest size
            return None
        self.num_padded_steps += 1
        self.buffers.fill(input_ids, positions, meta, size)
        return size, self.buffers.metadata(meta, size, self._max_seq_len(meta))

    def _inputs(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        # New view objects on every call, never one pair reused: the rotary embedding memoizes
        # its cos/sin lookup per positions tensor (one forward pass), and a capture that reused
        # the warm-up's tensor would hit that memo, record no lookup, and replay every step
        # with the warm-up's positions (caught on an H200: replay != eager from the 2nd step).
        return self.buffers.input_ids[:size], self.buffers.positions[:size]

    def forward(self, size: int) -> torch.Tensor:
        """hidden states [size, hidden] of the padded batch; the caller slices the real rows."""
        graph = self.graphs.get(size)
        if graph is not None:
            graph.replay()  # every kernel of the forward, one launch, on the buffers' current data
            return self.outputs[size]
        return self.model(*self._inputs(size))

    @torch.inference_mode()
    def capture(self, meta_template: AttentionMetadata) -> None:
        """Record one graph per capture size, largest first (smaller ones reuse its memory pool).

        meta_template is any decode metadata (the runner builds a dummy one); its values do not
        matter, only that it points attention at the buffers. Called once the KV cache exists.
        """
        if not self.capture_enabled:
            return
        start = time.perf_counter()
        self.pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.capture_sizes):
            meta = self.buffers.metadata(meta_template, size, self.max_model_len)
            self.buffers.slot_mapping[:size].fill_(PAD_SLOT_ID)  # warm-up writes no KV
            with set_forward_context(meta):
                # Warm-up outside the graph: compiles, autotunes, allocates workspaces once.
                for _ in range(2):
                    self.model(*self._inputs(size))
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    self.outputs[size] = self.model(*self._inputs(size))
            self.graphs[size] = graph
        torch.cuda.synchronize(self.device)
        logger.info(
            "captured %d CUDA graphs (decode batch sizes %s) in %.1f s",
            len(self.graphs),
            self.capture_sizes,
            time.perf_counter() - start,
        )
