"""Piecewise compilation: cut the model's graph at attention, compile each piece, reuse twins.

Stage 6. Mirrors vllm/compilation/backends.py (`VllmBackend`, `split_graph`, its
PiecewiseCompileInterpreter), much reduced. Dynamo hands this backend ONE FX graph of the whole
forward pass (30 decoder layers for SmolLM2). Giving that graph to inductor in one piece makes
it generate and compile one huge C++ file: measured here, 41 s for a 1-layer model and 572 s for
4 layers of SmolLM2's size, so the 30-layer model never finished a cold start in 14 minutes.
vLLM avoids that the same way we do below:

1. `split_graph` cuts the graph before and after every attention op (the `splitting_ops`), so
   the pieces are: embedding + layer 0 up to attention; then, 29 times, "the rest of layer i +
   layer i+1 up to attention"; then the last layer's rest + the final norm.
2. The pieces between two attentions are the SAME computation with different weights, and
   dynamo passes weights in as graph inputs. `_piece_key` hashes a piece's structure (its ops
   and its inputs' shapes and dtypes, not their names), so inductor compiles each distinct
   piece once (three for a Llama) and the 28 twins reuse the compiled code.
3. Attention pieces are not compiled: they call the opaque custom op, which runs the paged
   attention backend in Python. On a GPU the compiled pieces are what CUDA graphs capture in
   vLLM's PIECEWISE mode (attention stays outside, so its varying metadata never breaks a graph).
Next: wrapper.py, which hands this backend to torch.compile.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch._dispatch.python import enable_python_dispatcher
from torch._guards import detect_fake_mode
from torch.fx.passes.split_module import split_module

from vllm_mini.logger import init_logger

logger = init_logger(__name__)


def splitting_ops() -> set[Any]:
    """The ops the graph is cut at (vLLM's CompilationConfig.splitting_ops)."""
    # Dynamo records the call as written (the op "packet"); traced code may name the overload.
    op = torch.ops.vllm_mini.unified_attention
    return {op, op.default}


def split_graph(gm: fx.GraphModule, ops: set[Any]) -> tuple[fx.GraphModule, set[str]]:
    """Cut `gm` around every node calling one of `ops`; return it and the names of those pieces."""
    piece, assignment, splitting = 0, {}, set()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "call_function" and node.target in ops:
            piece += 1  # the op gets a piece of its own, between two compiled ones
            assignment[node] = piece
            splitting.add(f"submod_{piece}")
            piece += 1
        else:
            assignment[node] = piece
    split = split_module(gm, None, lambda node: assignment[node], keep_original_order=True)
    return split, splitting


def _describe(value: Any) -> str:
    """Shape, strides and dtype of a (fake) tensor; a SymInt as its expression."""
    if isinstance(value, torch.Tensor):
        return f"T{tuple(str(s) for s in value.shape)}{value.stride()}{value.dtype}"
    return f"{type(value).__name__}:{value}"


def _piece_key(piece: fx.GraphModule, args: Sequence[Any]) -> str:
    """A hash of what the piece computes, blind to node names (which differ per layer)."""
    index: dict[fx.Node, int] = {}
    lines = [_describe(a) for a in args]

    def ref(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: f"%{index[n]}")

    for i, node in enumerate(piece.graph.nodes):
        index[node] = i
        target = node.target if node.op != "placeholder" else "input"
        lines.append(f"{node.op} {target} {ref(node.args)} {ref(node.kwargs)}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class _PieceCompiler(fx.Interpreter):
    """Runs the split graph on fake inputs; compiles each compute piece on the way.

    The fake run is how each piece learns its example inputs (shapes, dtypes, the symbolic
    number of tokens), which inductor needs to compile it.
    """

    def __init__(self, split: fx.GraphModule, backend: PiecewiseBackend, skip: set[str]) -> None:
        super().__init__(split)
        self.split, self.backend, self.skip = split, backend, skip

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        piece = self.fetch_attr(target)
        out = super().call_module(target, args, kwargs)  # fake outputs for the next piece
        if target not in self.skip:
            # The split module's code calls `self.submod_N(...)`; an entry in its instance
            # __dict__ is found before the registered submodule, so this swaps in the compiled
            # function without touching the graph.
            self.split.__dict__[target] = self.backend.compile_piece(piece, list(args))
        return out


class PiecewiseBackend:
    """A torch.compile backend: `torch.compile(fn, backend=PiecewiseBackend())`."""

    def __init__(self) -> None:
        self.compiled: dict[str, Callable] = {}  # piece key -> inductor's compiled function
        self.num_pieces = 0  # compute pieces in the model (31 for a 30-layer Llama)
        self.num_inductor_compiles = 0  # distinct pieces inductor compiled (3 for a Llama)

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        start = time.perf_counter()
        split, attention_pieces = split_graph(gm, splitting_ops())
        # Dynamo passes the real weights; the pieces are compiled against fake copies (dynamo's
        # own fake mode, which remembers that dim 0 of the inputs is the symbolic token count).
        fake_mode = detect_fake_mode(example_inputs)
        fake_inputs = [
            fake_mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in example_inputs
        ]
        with fake_mode, enable_python_dispatcher():
            _PieceCompiler(split, self, attention_pieces).run(*fake_inputs)
        logger.info(
            "piecewise compile: %d attention splits, %d compute pieces, %d compiled by inductor "
            "(the rest reuse a twin's code), %.1f s",
            len(attention_pieces),
            self.num_pieces,
            self.num_inductor_compiles,
            time.perf_counter() - start,
        )
        return split

    def compile_piece(self, piece: fx.GraphModule, args: list[Any]) -> Callable:
        from torch._inductor.compile_fx import compile_fx

        self.num_pieces += 1
        key = _piece_key(piece, args)
        if key not in self.compiled:
            self.compiled[key] = compile_fx(piece, args)
            self.num_inductor_compiles += 1
        return self.compiled[key]
