"""The OpenAI-compatible server (stage 12). Mirrors vllm/entrypoints/openai/.

Read in this order: protocol.py (the wire format), serving_models.py, serving_engine.py (what
every endpoint shares), serving_completion.py, serving_chat.py, serving_tokenization.py,
metrics.py, and api_server.py (routes, errors, `build_app`, `run_server`).
"""
