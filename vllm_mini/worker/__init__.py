"""Worker and model runner: turn a SchedulerOutput into a forward pass.

Stage 5. Mirrors vllm/v1/worker/. Read worker.py, then model_runner.py, input_batch.py and
block_table.py.
"""
