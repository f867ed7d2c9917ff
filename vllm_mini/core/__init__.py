"""KV-cache memory management and scheduling. Stages 4-5. Mirrors vllm/v1/core/.

Read kv_cache_utils.py (blocks, hashes, the free queue), block_pool.py, kv_cache_manager.py, then
sched/scheduler.py.
"""
