"""Glue to HF transformers: resolve a model name to its config and tokenizer. Mirrors vllm/transformers_utils/."""
