"""Token embedding and LM head, split over the vocabulary across tensor-parallel ranks.

Stage 2 (sharding used in stage 8). Mirrors vllm/model_executor/layers/vocab_parallel_embedding.py.
Rank r owns rows [r * V/n, (r+1) * V/n) of the embedding table. A token id outside that range gets
zeros on this rank; the all-reduce adds the one rank that had it. The LM head reuses the same
sharded table (tied embeddings) or its own, and each rank produces logits for its vocab slice.
Next: logits_processor.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm_mini.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)

# vLLM pads the vocab so every rank gets an equal, aligned slice.
DEFAULT_VOCAB_PADDING_SIZE = 64


def pad_vocab_size(vocab_size: int, pad_to: int = DEFAULT_VOCAB_PADDING_SIZE) -> int:
    return ((vocab_size + pad_to - 1) // pad_to) * pad_to


class VocabParallelEmbedding(nn.Module):
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        params_dtype: torch.dtype | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.prefix = prefix
        self.org_vocab_size = num_embeddings
        padded = pad_vocab_size(num_embeddings, DEFAULT_VOCAB_PADDING_SIZE * self.tp_size)
        self.num_embeddings_per_partition = padded // self.tp_size
        self.vocab_start_index = self.tp_rank * self.num_embeddings_per_partition
        self.vocab_end_index = self.vocab_start_index + self.num_embeddings_per_partition
        self.weight = nn.Parameter(
            torch.empty(
                self.num_embeddings_per_partition,
                embedding_dim,
                dtype=params_dtype or torch.get_default_dtype(),
            ),
            requires_grad=False,
        )
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        """Copy this rank's vocab rows; rows past the real vocab (padding) stay zero."""
        start = min(self.vocab_start_index, self.org_vocab_size)
        end = min(self.vocab_end_index, self.org_vocab_size)
        param.data.zero_()
        param.data[: end - start].copy_(loaded_weight[start:end])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        in_range = (input_ids >= self.vocab_start_index) & (input_ids < self.vocab_end_index)
        local_ids = torch.where(in_range, input_ids - self.vocab_start_index, 0)
        out = F.embedding(local_ids, self.weight) * in_range.unsqueeze(-1)
        return tensor_model_parallel_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection hidden -> vocab logits; its weight has the embedding's layout."""

    def tie_weights(self, embed_tokens: VocabParallelEmbedding) -> ParallelLMHead:
        self.weight = embed_tokens.weight
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ParallelLMHead is applied by LogitsProcessor, not called directly")
