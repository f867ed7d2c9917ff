"""Speculative decoding (stage 11): proposers of draft tokens and their acceptance metrics.

Mirrors vllm/v1/spec_decode/. Read ngram_proposer.py, then metrics.py; the verification half
lives in model_executor/layers/rejection_sampler.py and the bookkeeping in the scheduler.
"""
