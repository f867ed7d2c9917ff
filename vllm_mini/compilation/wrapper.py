"""Compile the model's forward once, with the number of tokens as its one dynamic dimension.

Stage 6. Mirrors vllm/compilation/decorators.py (`support_torch_compile`) and
vllm/compilation/backends.py, much reduced. What happens, in order:
1. Dynamo traces `model.forward(input_ids, positions)` into an FX graph. Both inputs are marked
   dynamic in dim 0 (`mark_unbacked`: any size, even 0 or 1, with no size guard), so one graph
   serves every batch: a prefill of 300 tokens and a decode of 1 reuse it, nothing recompiles.
2. Each attention layer is the custom op `vllm_mini::unified_attention` (attention/layer.py): an
   opaque node, so the paged-attention Python and kernels stay out of the graph.
3. backends.py cuts the graph at those nodes (vLLM's splitting_ops) and has inductor compile
   each piece between two attentions, once per distinct piece: the decoder layers are twins,
   so a 30-layer model costs three piece compiles, not one 30-layer compile.
4. Inductor fuses each piece (RMSNorm, rotary, SiLU*mul, residual adds) into generated C++/OpenMP
   (CPU) or Triton (GPU) kernels; matmuls stay calls to the BLAS library.
5. Inductor's FX graph cache, under `cache_dir`, keys the generated code by the graph: a second
   start with the same model skips codegen and the C++ compile (the "warm" start).
Next: backends.py, then cuda_graph.py.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.fx.experimental._config
from torch import nn

from vllm_mini.compilation.backends import PiecewiseBackend
from vllm_mini.config.compilation import CompilationConfig, CompilationMode
from vllm_mini.logger import init_logger

logger = init_logger(__name__)


def configure_compile_cache(cache_dir: str) -> None:
    """Point inductor's on-disk caches at cache_dir (it reads the env var when it compiles)."""
    os.makedirs(cache_dir, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    torch._inductor.config.fx_graph_cache = True  # the generated code, keyed by graph + inputs
    # AOTAutograd's cache sits on top and, on a hit, re-adds a `num_tokens >= 2` guard that the
    # size-oblivious trace never made: a batch of 1 would then recompile. The FX graph cache
    # alone still skips inductor's codegen and C++ compile, the expensive part.
    torch._functorch.config.enable_autograd_cache = False
    # Dynamo's own limit; the tests assert the count of compiles instead of relying on it.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 8)
    # Without this, a dynamic size is assumed never to be 0 or 1 (and a batch of 1 recompiles);
    # "size oblivious" reasoning lets the one graph cover a single-token decode too.
    torch.fx.experimental._config.backed_size_oblivious = True


class CompiledModel(nn.Module):
    """Wraps a model so that `forward` runs its compiled graph; everything else is the model's.

    `compute_logits`, `load_weights` and the parameters are reached through the wrapped module, so
    the runner can use the wrapper wherever it used the model.
    """

    def __init__(self, model: nn.Module, config: CompilationConfig) -> None:
        super().__init__()
        self.model = model
        self.mode = CompilationMode(config.mode)
        configure_compile_cache(config.cache_dir)
        self.backend: PiecewiseBackend | None = None
        if self.mode == CompilationMode.STOCK_TORCH_COMPILE:
            # Stock torch.compile: dynamo guards on shapes, and recompiles when they change
            # (the first new batch size turns the dimension dynamic: usually a second compile).
            self._compiled = torch.compile(model.forward)
        else:
            # fullgraph: any graph break is an error, so nothing silently falls back to Python.
            # Shape guards are dropped (vLLM drops every guard, "trace once"): the one graph is
            # valid for any number of tokens, and a guard like `num_tokens >= 2`, which a warm
            # cache hit adds back, would otherwise recompile for a single-token decode.
            self.backend = PiecewiseBackend()
            self._compiled = torch.compile(
                model.forward,
                backend=self.backend,
                fullgraph=True,
                dynamic=False,
                options={"guard_filter_fn": _drop_shape_guards},
            )
        self.num_compiles = 0  # graphs dynamo produced; the tests pin it at 1 for mode 3
        self.compile_seconds = 0.0

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.mode == CompilationMode.VLLM_COMPILE:
            # dim 0 = number of tokens, the one dimension that changes between steps.
            torch._dynamo.mark_dynamic(input_ids, 0)
            torch._dynamo.mark_dynamic(positions, 0)
        before = _frames_compiled()
        start = time.perf_counter()
        out = self._compiled(input_ids, positions)
        new = _frames_compiled() - before
        if new:
            seconds = time.perf_counter() - start
            self.num_compiles += new
            self.compile_seconds += seconds
            logger.info(
                "torch.compile (mode %d, %s) compiled %s for %d tokens in %.1f s (cache: %s)",
                int(self.mode),
                self.mode.name,
                type(self.model).__name__,
                input_ids.shape[0],
                seconds,
                os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
            )
        return out

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(hidden_states)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)


def _drop_shape_guards(guards: list[Any]) -> list[bool]:
    """Keep every dynamo guard except those on tensor sizes (the shape environment's)."""
    return [getattr(g, "guard_type", None) != "SHAPE_ENV" for g in guards]


def _frames_compiled() -> int:
    """How many frames dynamo has compiled in this process (its own counter)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def maybe_compile(model: nn.Module, config: CompilationConfig) -> nn.Module:
    """The model itself for mode 0, else the compiled wrapper (compiles lazily, on first use)."""
    if config.mode in (None, CompilationMode.NONE):
        return model
    return CompiledModel(model, config)
