"""Token embedding and LM head, split over the vocabulary across tensor-parallel ranks.

Stage 2 (sharding used in stage 8). Mirrors vllm/model_executor/layers/vocab_parallel_embedding.py.
Rank r owns rows [r * V/n, (r+1) * V/n) of the embedding table. A token id outside that range gets
zeros on this rank; the all-reduce adds the one rank that had it. The LM head reuses the same
sharded table (tied embeddings) or its own, and each rank produces logits for its vocab slice.
Quantized embeddings (GGUF keeps the table in its blocks) plug in through the same
`quant_method` hook as linear layers: the method creates the table and looks rows up
(`embedding`), and serves as the LM head's matmul (`apply`). Next: logits_processor.py.
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
from vllm_mini.model_executor.layers.linear import UnquantizedLinearMethod
from vllm_mini.model_executor.layers.quantization import QuantizationConfig, QuantizeMethodBase
from vllm_mini.model_executor.layers.utils import prepack_weight

# vLLM pads the vocab so every rank gets an equal, aligned slice.
DEFAULT_VOCAB_PADDING_SIZE = 64


def pad_vocab_size(vocab_size: int, pad_to: int = DEFAULT_VOCAB_PADDING_SIZE) -> int:
    return ((vocab_size + pad_to - 1) // pad_to) * pad_to


class UnquantizedEmbeddingMethod(UnquantizedLinearMethod):
    """A float [vocab, hidden] table: row lookup for the embedding, x @ W^T for the LM head.

    The weight and the matmul are the linear method's; only the layout step differs, because
    the table must stay row-major for `F.embedding` lookups.
    """

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        # The LM head gets a prepacked copy (layers/utils.py; oneDNN's was 1.9x F.linear at 1 row
        # and 2.4x at 16 in fp32), on the step's largest matmul, for one more copy of the table
        # (113 MB fp32 for SmolLM2). The plain table stays: F.embedding looks rows up in it.
        if isinstance(layer, ParallelLMHead):
            layer.weight_packed = prepack_weight(layer.weight, layer.tp_size)

    def embedding(self, layer: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, layer.weight)


class VocabParallelEmbedding(nn.Module):
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        params_dtype: torch.dtype | None = None,
        quant_config: QuantizationConfig | None = None,
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
        self.embedding_dim = embedding_dim
        method = quant_config.get_quant_method(self, prefix) if quant_config else None
        self.quant_method: QuantizeMethodBase = method or UnquantizedEmbeddingMethod()
        self.quant_method.create_weights(
            self,
            embedding_dim,
            [self.num_embeddings_per_partition],
            params_dtype or torch.get_default_dtype(),
        )
        for param in self.parameters(recurse=False):
            if not hasattr(param, "weight_loader"):
                param.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        """Copy this rank's vocab rows; rows past the real vocab (padding) stay zero."""
        start = min(self.vocab_start_index, self.org_vocab_size)
        end = min(self.vocab_end_index, self.org_vocab_size)
        param.data.zero_()
        param.data[: end - start].copy_(loaded_weight[start:end])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self.quant_method.embedding(self, input_ids)
        in_range = (input_ids >= self.vocab_start_index) & (input_ids < self.vocab_end_index)
        local_ids = torch.where(in_range, input_ids - self.vocab_start_index, 0)
        out = self.quant_method.embedding(self, local_ids) * in_range.unsqueeze(-1)
        return tensor_model_parallel_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection hidden -> vocab logits; its weight has the embedding's layout."""

    def tie_weights(self, embed_tokens: VocabParallelEmbedding) -> VocabParallelEmbedding:
        """Share the embedding table. A quantized table has more than one tensor (blocks,
        scales), so the LM head becomes the embedding module itself, whose method also knows how
        to multiply by it (vLLM does the same for GGUF)."""
        if not isinstance(embed_tokens.quant_method, UnquantizedEmbeddingMethod):
            return embed_tokens
        self.weight = embed_tokens.weight
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ParallelLMHead is applied by LogitsProcessor, not called directly")
