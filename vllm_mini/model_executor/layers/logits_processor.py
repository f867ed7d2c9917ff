"""LogitsProcessor: hidden states -> logits over the real vocabulary.

Stage 2. Mirrors vllm/model_executor/layers/logits_processor.py. Only the hidden state of each
sequence's LAST scheduled token is needed for sampling, so the model runner selects those rows
first (a prefill of 500 tokens needs one row of logits, not 500). Each TP rank computes logits for
its vocab slice; they are gathered, then the padding columns are cut off. Next: sampler.py.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_mini.distributed import tensor_model_parallel_all_gather
from vllm_mini.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding


class LogitsProcessor(nn.Module):
    def __init__(self, vocab_size: int, scale: float = 1.0) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.scale = scale

    def forward(self, lm_head: VocabParallelEmbedding, hidden_states: torch.Tensor) -> torch.Tensor:
        # hidden_states: [num_seqs, hidden] -> logits: [num_seqs, vocab_size]
        logits = lm_head.quant_method.apply(lm_head, hidden_states)
        logits = tensor_model_parallel_all_gather(logits)
        logits = logits[..., : self.vocab_size]
        if self.scale != 1.0:
            logits = logits * self.scale
        return logits
