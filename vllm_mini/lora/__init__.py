"""Multi-LoRA serving (stage 9): many adapters on one base model, mixed in one batch.

Mirrors vllm/lora/. Read in order: request.py (what a user passes), peft_helper.py and
lora_model.py (a PEFT adapter on disk -> per-layer A and B), layers.py (the wrapped linear
layers and their adapter slots), punica_wrapper.py and ops/ (the batched shrink/expand),
model_manager.py (slots, the CPU cache, LRU eviction).
"""
