"""Model execution: layers, model definitions, weight loading, sampling. Stages 2 and 7.

Mirrors vllm/model_executor/. Read models/llama.py first, then layers/ and model_loader/.
"""
