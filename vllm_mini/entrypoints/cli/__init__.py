"""The `vllm-mini` command line. Mirrors vllm/entrypoints/cli/."""
