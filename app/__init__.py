"""The KV-cache visualizer: a Streamlit app that replays the engine's step trace.

Stages 4-5 teaching tool. Mirrors nothing in vLLM (vLLM exposes the same facts as KV-cache events
and scheduler stats). Start with streamlit_app.py; the engine-side recorder is
vllm_mini/engine/trace.py. Nothing in vllm_mini/ imports this package.
"""
