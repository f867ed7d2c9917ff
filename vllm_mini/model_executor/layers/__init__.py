"""Model layers with tensor-parallel weight loading. Stage 2. Mirrors vllm/model_executor/layers/."""
