"""The C++ kernel is compiled when vllm_mini is installed, never while it runs.

Stage 4. vLLM compiles csrc/ during `pip install` (its setup.py driving CMakeLists.txt); our
setup.py does the same with torch's BuildExtension, into the extension module `vllm_mini._C`.
These tests check that the engine's cpu backend calls that module and nothing compiles at run
time, that what an interrupted run-time build used to leave behind (a lock file, a half-written
build directory) cannot hang or change a run, that a missing build falls back to the torch
backend with the fix in the error, and (slow) that a wheel built from the source carries the
kernel and a run from the installed wheel uses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import vllm_mini
from vllm_mini import LLM, SamplingParams
from vllm_mini.attention.ops import get_paged_attention_ops, is_paged_attention_available
from vllm_mini.platforms.interface import Platform

REPO = Path(__file__).resolve().parents[2]
GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
PROMPTS = [{"prompt_token_ids": [5, 17, 42, 9]}, {"prompt_token_ids": [8, 8, 100, 3, 77, 21, 6]}]


def _refuse_runtime_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils.cpp_extension as cpp_extension

    def refuse(*args, **kwargs):
        raise AssertionError("a kernel was compiled at run time (torch.utils.cpp_extension)")

    for name in ("load", "load_inline"):
        monkeypatch.setattr(cpp_extension, name, refuse)


def test_compiled_module_lives_inside_the_package():
    from vllm_mini import _C

    assert Path(_C.__file__).parent == Path(vllm_mini.__file__).parent
    assert callable(_C.paged_attention) and callable(_C.reshape_and_cache)


def test_no_runtime_compilation_left_in_the_package():
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "vllm_mini").rglob("*.py")
        if "cpp_extension" in p.read_text()
    ]
    assert offenders == []


def test_engine_cpu_backend_calls_the_compiled_kernel(tiny_llama_dir, monkeypatch):
    from vllm_mini.attention.ops import cpu_paged_attn

    _refuse_runtime_build(monkeypatch)
    calls = {"paged_attention": 0, "reshape_and_cache": 0}

    def counted(name):
        real = getattr(cpu_paged_attn._C, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(cpu_paged_attn, "_C", SimpleNamespace(**{n: counted(n) for n in calls}))
    llm = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)  # the platform's default
    assert llm.llm_engine.vllm_config.attention_config.backend == "cpu"
    out = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    assert calls["paged_attention"] > 0 and calls["reshape_and_cache"] > 0
    ref = LLM(str(tiny_llama_dir), attention_backend="torch", kv_cache_memory_bytes=1 << 22)
    assert out == [o.outputs[0].token_ids for o in ref.generate(PROMPTS, GREEDY, use_tqdm=False)]


def test_missing_build_falls_back_to_torch_with_the_fix_in_the_error(monkeypatch):
    # What an install without g++ looks like: no vllm_mini._C to import.
    monkeypatch.setitem(sys.modules, "vllm_mini._C", None)
    monkeypatch.delattr(vllm_mini, "_C", raising=False)
    monkeypatch.delitem(sys.modules, "vllm_mini.attention.ops.cpu_paged_attn", raising=False)
    assert not is_paged_attention_available("cpu")
    with pytest.raises(ImportError, match=r"vllm_mini\._C .*pip install --no-build-isolation"):
        get_paged_attention_ops("cpu")
    assert Platform().default_attention_backend("cpu") == "torch"


def _plant_interrupted_jit_build(monkeypatch: pytest.MonkeyPatch, ext_dir: Path) -> list[Path]:
    """What a run-time build killed mid-compile left in torch's extension directory."""
    from torch.utils.cpp_extension import _get_build_directory  # where torch's builder looks

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(ext_dir))
    planted = []
    for name in ("vllm_mini_cpu_paged_attention", "vllm_mini_cuda_paged_attention"):
        build = Path(_get_build_directory(name, verbose=False))
        (build / "lock").write_text("")  # torch's FileBaton: a later build waits for it forever
        (build / "build.ninja").write_text("ninja_required_version = 1.3\ncxx = c++\n")
        (build / "paged_attention.o").write_bytes(b"\x7fELF\x02\x01")  # truncated object file
        (build / f"{name}.so").write_bytes(b"")  # an empty library
        planted += sorted(build.iterdir())
    return planted


def test_stale_lock_from_an_interrupted_jit_build_cannot_hang_a_run(
    tiny_llama_dir, tmp_path, monkeypatch
):
    planted = _plant_interrupted_jit_build(monkeypatch, tmp_path / "torch_extensions")
    before = {p: p.stat().st_mtime_ns for p in planted}
    script = textwrap.dedent(
        f"""
        from vllm_mini import LLM, SamplingParams
        llm = LLM({str(tiny_llama_dir)!r}, kv_cache_memory_bytes=1 << 22)
        out = llm.generate({PROMPTS!r}, SamplingParams(temperature=0.0, max_tokens=6,
                           ignore_eos=True), use_tqdm=False)
        print("backend", llm.llm_engine.vllm_config.attention_config.backend)
        print("tokens", [o.outputs[0].token_ids for o in out])
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "backend cpu" in run.stdout
    llm = LLM(str(tiny_llama_dir), attention_backend="torch", kv_cache_memory_bytes=1 << 22)
    expected = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    assert f"tokens {expected}" in run.stdout
    assert {p: p.stat().st_mtime_ns for p in planted} == before  # not even looked at


def _copy_source_tree(dst: Path) -> Path:
    """The files a build reads, without this checkout's compiled library or build outputs."""
    dst.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    skip = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info", "build")
    for name in ("csrc", "vllm_mini"):
        shutil.copytree(REPO / name, dst / name, ignore=skip)
    return dst


RUN_CLI = """
import runpy, sys
import torch
import vllm_mini._C as C
from vllm_mini.platforms.interface import Platform

calls = 0
real_kernel = C.paged_attention

def counted(*args, **kwargs):
    global calls
    calls += 1
    return real_kernel(*args, **kwargs)

C.paged_attention = counted
real_default = Platform.default_attention_backend

def report_default(self, device_type):
    name = real_default(self, device_type)
    print("attention backend:", name)
    return name

Platform.default_attention_backend = report_default
sys.argv = ["vllm-mini", *sys.argv[1:]]
runpy.run_module("vllm_mini.entrypoints.cli.main", run_name="__main__")
print("vllm_mini:", sys.modules["vllm_mini"].__file__)
print("vllm_mini._C:", C.__file__)
print("kernel calls:", calls)
"""


@pytest.mark.slow
def test_installed_wheel_runs_its_compiled_kernel(tiny_llama_dir, tmp_path):
    src = _copy_source_tree(tmp_path / "src")
    wheels, site, cwd = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(wheels)]
    subprocess.run(build, check=True, capture_output=True, timeout=1200)
    (wheel,) = wheels.glob("vllm_mini-*.whl")
    install = [*pip, "install", "--no-deps", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    assert list((site / "vllm_mini").glob("_C.*.so"))

    argv = ["generate", "w5 w9 w12", "--chat-template-off", "--max-tokens", "4"]
    argv += ["--model", str(tiny_llama_dir), "--kv-cache-memory-bytes", str(1 << 22)]
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", RUN_CLI, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(": ", 1) for line in run.stdout.splitlines() if ": " in line)
    assert lines["attention backend"] == "cpu"
    assert Path(lines["vllm_mini"]).is_relative_to(site)
    assert Path(lines["vllm_mini._C"]).is_relative_to(site)
    assert int(lines["kernel calls"]) > 0
    assert "Output" in lines
