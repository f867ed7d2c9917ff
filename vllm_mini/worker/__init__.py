"""Worker and model runner: turn a SchedulerOutput into a forward pass. Stage 5. Mirrors vllm/v1/worker/."""
