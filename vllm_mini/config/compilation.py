"""CompilationConfig: whether the model is compiled, and which steps replay CUDA graphs.

Stage 6. Mirrors vllm/config/compilation.py. Two independent knobs, as in vLLM:
- `mode`: how the model's forward is turned into fewer, fused kernels (torch.compile). 0 runs the
  plain PyTorch modules; 1 is stock `torch.compile`; 3 is vLLM's own pipeline: compiled once with
  the number of tokens as the one dynamic dimension and attention left out of the graph as a
  custom op (vllm_mini/compilation/). vLLM's mode 2 (trace once, drop guards) has no separate
  implementation here; mode 3 already never recompiles.
- `cudagraph_mode`: which steps run through persistent (static) input buffers padded to one of
  `cudagraph_capture_sizes`, and on a GPU replay a captured CUDA graph. FULL_DECODE_ONLY captures
  the whole forward for pure decode steps; prefill-containing steps run eagerly. PIECEWISE is
  vLLM's graphs-between-attention mode, which needs the split FX graph; see docs/stages/06.
`VllmConfig` resolves the "auto" values for the device. Next: vllm_mini/compilation/.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field


class CompilationMode(enum.IntEnum):
    NONE = 0  # eager PyTorch: one kernel launch per ATen op
    STOCK_TORCH_COMPILE = 1  # torch.compile(model) with its default guards and recompiles
    DYNAMO_TRACE_ONCE = 2  # vLLM: trace once, drop guards (not separate here; use 3)
    VLLM_COMPILE = 3  # ours: one dynamic-shape graph, attention as a splitting custom op


class CUDAGraphMode(enum.Enum):
    NONE = "NONE"
    FULL_DECODE_ONLY = "FULL_DECODE_ONLY"  # one graph per capture size, pure decode steps only
    PIECEWISE = "PIECEWISE"  # graphs between attention ops (vLLM); not implemented here


_SUPPORTED_MODES = (CompilationMode.NONE, CompilationMode.STOCK_TORCH_COMPILE, 3)
_SUPPORTED_CUDAGRAPH = (CUDAGraphMode.NONE, CUDAGraphMode.FULL_DECODE_ONLY)


def default_capture_sizes(max_num_seqs: int) -> list[int]:
    """vLLM's default batch sizes to capture: 1, 2, 4, then multiples of 8, up to max_num_seqs.

    Small sizes are dense because decode batches are often small and padding 3 -> 4 wastes less
    than 3 -> 8; big ones step by 8 because each captured graph costs start-up time and memory.
    """
    sizes = [s for s in (1, 2, 4) if s <= max_num_seqs]
    sizes += list(range(8, max_num_seqs + 1, 8))
    return sizes or [1]


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "vllm_mini", "torch_compile_cache")


@dataclass
class CompilationConfig:
    # None = auto: resolved by VllmConfig (0 unless the platform says compiling pays off).
    mode: int | None = None
    # None = auto: FULL_DECODE_ONLY on CUDA, NONE on CPU (there is nothing to capture).
    cudagraph_mode: str | None = None
    # None = default_capture_sizes(max_num_seqs); a batch above the largest runs eagerly.
    cudagraph_capture_sizes: list[int] | None = None
    # Inductor's FX graph cache and generated code live here; a warm cache skips recompiling.
    cache_dir: str | None = None
    # Filled by VllmConfig: layer name -> Attention module, for the attention custom op to find.
    static_forward_context: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode is not None:
            self.mode = self._check_mode(self.mode)
        if self.cudagraph_mode is not None:
            self.cudagraph_mode = self._check_cudagraph_mode(self.cudagraph_mode)
        if self.cudagraph_capture_sizes is not None:
            sizes = self.cudagraph_capture_sizes
            if isinstance(sizes, int) or not all(isinstance(s, int) and s >= 1 for s in sizes):
                raise ValueError(
                    f"cudagraph_capture_sizes must be a list of ints >= 1, got {sizes!r}"
                )
            self.cudagraph_capture_sizes = sorted(set(sizes))
        if self.cache_dir is None:
            self.cache_dir = os.environ.get("VLLM_MINI_CACHE_DIR") or default_cache_dir()

    @staticmethod
    def _check_mode(mode: int) -> int:
        allowed = "0 (none), 1 (stock torch.compile) or 3 (vllm_mini compile)"
        if isinstance(mode, bool) or not isinstance(mode, int) or mode not in range(4):
            raise ValueError(f"compilation_config.mode must be {allowed}, got {mode!r}")
        if mode not in _SUPPORTED_MODES:
            raise ValueError(
                f"compilation_config.mode {mode} ({CompilationMode(mode).name}) is vLLM's but "
                f"not implemented in vllm_mini; use {allowed}"
            )
        return int(mode)

    @staticmethod
    def _check_cudagraph_mode(mode: str) -> str:
        names = [m.value for m in CUDAGraphMode]
        name = mode.value if isinstance(mode, CUDAGraphMode) else str(mode).upper()
        if name not in names:
            raise ValueError(
                f"compilation_config.cudagraph_mode must be one of {names}, got {mode!r}"
            )
        if CUDAGraphMode(name) not in _SUPPORTED_CUDAGRAPH:
            allowed = [m.value for m in _SUPPORTED_CUDAGRAPH]
            raise ValueError(
                f"compilation_config.cudagraph_mode {name} is vLLM's but not implemented in "
                f"vllm_mini; use one of {allowed}"
            )
        return name

    @classmethod
    def from_cli(cls, value: CompilationConfig | dict | int | str | None) -> CompilationConfig:
        """`LLM(compilation_config=3)`, `{"mode": 3, ...}` or `--compilation-config '{...}'`."""
        if value is None:
            return cls()
        if isinstance(value, CompilationConfig):
            return value
        if isinstance(value, str):
            import json

            value = json.loads(value) if value.strip().startswith("{") else int(value)
        if isinstance(value, int):
            return cls(mode=value)
        if isinstance(value, dict):
            known = {"mode", "cudagraph_mode", "cudagraph_capture_sizes", "cache_dir"}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(
                    f"unknown compilation_config keys {unknown}; known: {sorted(known)}"
                )
            return cls(**value)
        raise ValueError(f"compilation_config must be an int mode or a dict, got {value!r}")

    def resolve(self, device_type: str, max_num_seqs: int, enforce_eager: bool) -> None:
        """Fill the auto values (VllmConfig calls this once the device is known)."""
        if enforce_eager:
            # vLLM's --enforce-eager: no compilation and no graphs, whatever else was asked.
            self.mode = CompilationMode.NONE
            self.cudagraph_mode = CUDAGraphMode.NONE.value
        if self.mode is None:
            self.mode = int(default_compilation_mode(device_type))
        if self.cudagraph_mode is None:
            auto = CUDAGraphMode.FULL_DECODE_ONLY if device_type == "cuda" else CUDAGraphMode.NONE
            self.cudagraph_mode = auto.value
        if self.cudagraph_capture_sizes is None:
            self.cudagraph_capture_sizes = default_capture_sizes(max_num_seqs)
        # A decode batch never exceeds max_num_seqs, so larger sizes would never be used.
        self.cudagraph_capture_sizes = [
            s for s in self.cudagraph_capture_sizes if s <= max_num_seqs
        ]
        if not self.cudagraph_capture_sizes:
            self.cudagraph_capture_sizes = [1]

    @property
    def max_capture_size(self) -> int:
        return max(self.cudagraph_capture_sizes or [0])


def default_compilation_mode(device_type: str) -> CompilationMode:
    """The mode `LLM()` uses when none is given; VLLM_MINI_COMPILE=0/1/3 overrides it.

    vLLM compiles by default on every platform. Measured on the shared 2-core CPU (stage 6 docs
    page): a cold inductor compile costs 15-40 s for the 2-layer test models, ~200 s for a
    4-layer one, and SmolLM2's 30 layers did not finish in 14 minutes, so the CPU default stays
    eager until compile start-up is brought down; CUDA compiles.
    """
    env = os.environ.get("VLLM_MINI_COMPILE")
    if env:
        return CompilationMode(CompilationConfig._check_mode(int(env)))
    return CompilationMode.VLLM_COMPILE if device_type == "cuda" else CompilationMode.NONE
