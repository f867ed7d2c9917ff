"""User-facing entry points: the LLM class, the CLI, the OpenAI-compatible server. Mirrors vllm/entrypoints/."""
