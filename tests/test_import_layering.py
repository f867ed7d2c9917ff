"""Import layering: a lower stage of vllm_mini never imports a higher one.

The engine is built bottom-up, the way the lessons teach it: configs first, then layers and models,
then the KV-cache bookkeeping and scheduler, then the engine that drives them, then the front
doors. If a low module imports a high one, the stack becomes a knot: importing the config would
load the models, and a lesson could no longer be read (or tested) on its own. vLLM keeps the same
order, e.g. vllm/config/ reads GGUF metadata through vllm/transformers_utils/, never through
vllm/model_executor/.

Every module is parsed with `ast` (nothing is imported). Lazy imports inside functions count:
deferring an import hides a cycle, it does not remove it. Imports under `if TYPE_CHECKING:` are
allowed, since they only exist for the type checker. Modules loaded by name through importlib
(the package's lazy `__init__`, the kernel registry in attention/ops) are not seen here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "vllm_mini"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# The teaching table: each part of vllm_mini and its layer. A module may import its own layer and
# any lower one. A dotted entry overrides its parent package (the longest matching prefix wins).
LAYERS: dict[str, int] = {
    # 0 foundations: import nothing from vllm_mini.
    "logger": 0,
    "attention.ops": 0,  # the PagedAttention kernels; the platform asks which of them are built
    "_C": 0,  # compiled C++ kernels (csrc/), as in vLLM's vllm._C
    "_C_cuda": 0,  # compiled CUDA kernels
    # 1 what to run: the configs, the HF glue that resolves a model, user knobs, the device.
    "config": 1,
    "transformers_utils": 1,
    "sampling_params": 1,
    "platforms": 1,
    # 2 the pieces a forward pass is made of (models are built from them, so they sit lower).
    "attention": 2,
    "forward_context": 2,
    "distributed": 2,
    # 2 also: multimodal inputs (stage 10): images, their hashes and placeholder spans, the
    # processors that expand prompts; the models and the scheduler read them.
    "multimodal": 2,
    # 3 model definitions, layers, weight loading.
    "model_executor": 3,
    # 3 also: torch.compile of a model and its CUDA-graph runner (stage 6).
    "compilation": 3,
    # 3 also: LoRA (stage 9): wrappers around the model's linear layers and their adapter slots.
    "lora": 3,
    # ... though what a user passes sits with the other request knobs.
    "lora.request": 1,
    # 4 KV-cache blocks and scheduling: requests, never tensors.
    "core": 4,
    "request": 4,
    # 4 also: speculative decoding's proposers and their metrics (stage 11). A draft model is a
    # model with its own KV blocks; the scheduler counts acceptances, the runner proposes.
    "spec_decode": 4,
    # 4 also: structured outputs (stage 13): grammars compiled and stepped beside the scheduler.
    "structured_output": 4,
    # 5 running steps: worker, engine, what it returns, and the stats about it.
    "worker": 5,
    "executor": 5,  # stage 8: how the engine core reaches its workers (in-process or not)
    "engine": 5,
    "outputs": 5,
    "metrics": 5,
    # 6 front doors: LLM, the OpenAI server, the CLI, the benchmark client.
    "entrypoints": 6,
    "tool_parsers": 6,  # tool calls in chat (stage 13): read back from the model's text
    "benchmarks": 6,
    "": 6,  # vllm_mini/__init__.py, the public API
}


def module_name(path: Path) -> str:
    """vllm_mini/config/model.py -> "config.model"; a package's __init__.py -> the package."""
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of the longest LAYERS entry that is `module` or one of its parent packages."""
    candidates = [
        key for key in LAYERS if key == "" or module == key or module.startswith(key + ".")
    ]
    return LAYERS[max(candidates, key=len)] if candidates else None


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported vllm_mini module relative to the package) for every runtime import."""
    tree = ast.parse(source)
    type_only = {
        id(inner)
        for block in ast.walk(tree)
        if _is_type_checking_block(block)
        for stmt in block.body
        for inner in ast.walk(stmt)
    }
    # The package a relative import starts from.
    here = [PACKAGE, *module.split(".")] if module else [PACKAGE]
    if not is_package:
        here = here[:-1]
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            # `from vllm_mini import config` imports the submodule vllm_mini.config.
            names = [f"{base}.{a.name}" for a in node.names] if base == PACKAGE else [base]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                found.append((node.lineno, name.removeprefix(PACKAGE).removeprefix(".")))
    return found


def layering_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """One line per import in `source` that reaches a higher layer than `module`'s."""
    own = layer_of(module)
    problems = []
    for lineno, target in imported_modules(source, module, is_package):
        theirs = layer_of(target)
        if own is not None and theirs is not None and theirs > own:
            problems.append(
                f"{module or PACKAGE} (layer {own}) imports {PACKAGE}.{target} "
                f"(layer {theirs}) on line {lineno}"
            )
    return problems


def all_modules() -> list[tuple[str, Path]]:
    return [(module_name(p), p) for p in sorted(PACKAGE_DIR.rglob("*.py"))]


def test_every_part_of_the_package_has_a_layer_in_the_table():
    parts = {name.split(".")[0] for name, _ in all_modules() if name}
    unplaced = sorted(parts - LAYERS.keys())
    assert not unplaced, f"place these parts of {PACKAGE} in LAYERS: {unplaced}"


def test_lower_layers_never_import_higher_layers():
    problems = []
    for name, path in all_modules():
        is_package = path.name == "__init__.py"
        problems += layering_violations(path.read_text(), name, is_package)
    assert not problems, "import goes up the stack:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from vllm_mini.model_executor.model_loader import get_model\n", 1),
        ("def f():\n    import vllm_mini.model_executor.models\n", 1),
        ("from ..model_executor import models\n", 1),
        ("from vllm_mini import engine\n", 1),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from vllm_mini.model_executor.models import ModelRegistry\n",
            0,
        ),
        ("from vllm_mini.transformers_utils.config import get_hf_config\n", 0),
        ("from vllm_mini.logger import init_logger\n", 0),
    ],
)
def test_the_checker_flags_config_reaching_up_but_not_type_only_imports(source, expected):
    assert len(layering_violations(source, "config.model")) == expected


def test_a_dotted_entry_overrides_its_package():
    assert layer_of("attention.ops.cpu_paged_attn") == LAYERS["attention.ops"]
    assert layer_of("attention.backends.paged") == LAYERS["attention"]
    assert layer_of("core.sched.scheduler") == LAYERS["core"]
