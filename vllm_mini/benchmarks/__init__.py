"""Online benchmarks: a load generator for a running `vllm-mini serve`.

Stage 12. Mirrors vllm/benchmarks/. `datasets.py` builds the seeded random workload, `serve.py`
sends it over HTTP with Poisson arrivals and turns the streamed replies into TTFT, TPOT, ITL and
end-to-end latency. The offline benchmarks (engine in-process) live in the repository's
`benchmarks/` folder; `vllm-mini bench throughput` runs the one there. Read `datasets.py` first.
"""
