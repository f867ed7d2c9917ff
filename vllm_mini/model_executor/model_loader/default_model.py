"""The default model, as seen from the loaders: a re-export of transformers_utils/default_model.py.

Stage 2. No vLLM counterpart. The code moved to vllm_mini/transformers_utils/default_model.py
because resolving the model name is a stage-1 job (config/model.py) and config must never import
model_executor (tests/test_import_layering.py checks that). This name stays for older imports.
"""

from __future__ import annotations

from vllm_mini.transformers_utils.default_model import (
    DEFAULT_MODEL_NAME,
    cache_dir,
    find_default_gguf,
    main,
    prepare_default_model,
)

__all__ = ["DEFAULT_MODEL_NAME", "cache_dir", "find_default_gguf", "main", "prepare_default_model"]
