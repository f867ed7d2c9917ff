"""The scheduler: who runs this step, and with how many tokens. Stage 5. Mirrors vllm/v1/core/sched/."""
