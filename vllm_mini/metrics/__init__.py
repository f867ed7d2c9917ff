"""Engine statistics and their loggers. Stage 5. Mirrors vllm/v1/metrics/."""
