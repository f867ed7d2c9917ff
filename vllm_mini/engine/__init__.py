"""The engine: EngineCore (schedule -> execute -> update), LLMEngine and AsyncLLM around it.

Stage 5. Mirrors vllm/v1/engine/. Read core.py, then llm_engine.py, then async_llm.py.
"""
