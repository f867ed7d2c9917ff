"""Glue to HF transformers: resolve a model name to its config and tokenizer. Mirrors vllm/transformers_utils/.

Stage 1. Read config.py first (model name -> ModelSource -> HF config), then default_model.py and
gguf_utils.py, which it uses, then tokenizer.py. Nothing here imports the model code.
"""
