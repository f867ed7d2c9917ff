"""Llama: the model family of SmolLM2, written with vLLM's parallel layers.

Stage 2. Mirrors vllm/model_executor/models/llama.py. Differences from HF's modeling_llama.py:
- inputs are ONE flat batch of tokens from many requests ([num_tokens]), with explicit positions;
  there is no batch or padding dimension (continuous batching needs this);
- q/k/v are one packed matmul (QKVParallelLinear), gate/up another (MergedColumnParallelLinear);
- attention goes through `Attention`, which owns the KV cache via the forward context;
- the residual add is fused into RMSNorm;
- logits are computed only for the rows the sampler needs (`compute_logits`).
Every model is built as `Model(vllm_config=..., prefix=...)`. Next: registry.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vllm_mini.attention import Attention
from vllm_mini.config import VllmConfig
from vllm_mini.distributed import get_pp_group, get_pp_indices
from vllm_mini.model_executor.layers.activation import SiluAndMul
from vllm_mini.model_executor.layers.layernorm import RMSNorm
from vllm_mini.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm_mini.model_executor.layers.logits_processor import LogitsProcessor
from vllm_mini.model_executor.layers.quantization import QuantizationConfig
from vllm_mini.model_executor.layers.rotary_embedding import get_rope
from vllm_mini.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)
from vllm_mini.model_executor.model_loader.weight_utils import default_weight_loader
from vllm_mini.model_executor.models.utils import (
    IntermediateTensors,
    PPMissingLayer,
    is_pp_missing_parameter,
)


class LlamaMLP(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size,
            [intermediate_size] * 2,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.gate_up_proj",
        )
        self.down_proj = RowParallelLinear(
            intermediate_size,
            hidden_size,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.down_proj",
        )
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, _ = self.gate_up_proj(x)
        x, _ = self.down_proj(self.act_fn(gate_up))
        return x


class LlamaAttention(nn.Module):
    """Self-attention; `qkv_bias` (Qwen2) and `qk_norm` (Qwen3) let the relatives reuse it."""

    def __init__(
        self,
        config,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
    ):
        super().__init__()
        hidden_size = config.hidden_size
        self.total_num_heads = config.num_attention_heads
        self.total_num_kv_heads = (
            getattr(config, "num_key_value_heads", None) or self.total_num_heads
        )
        self.head_dim = getattr(config, "head_dim", None) or hidden_size // self.total_num_heads
        self.qkv_proj = QKVParallelLinear(
            hidden_size,
            self.head_dim,
            self.total_num_heads,
            self.total_num_kv_heads,
            bias=qkv_bias or getattr(config, "attention_bias", False),
            quant_config=quant_config,
            prefix=f"{prefix}.qkv_proj",
        )
        # Heads on THIS rank (all of them at tp=1).
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(
            self.total_num_heads * self.head_dim,
            hidden_size,
            bias=getattr(config, "attention_bias", False) and not qkv_bias,
            quant_config=quant_config,
            prefix=f"{prefix}.o_proj",
        )
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.rotary_emb = get_rope(
            self.head_dim,
            self.head_dim,
            config.max_position_embeddings,
            _rope_theta(config),
            _rope_scaling(config),
        )
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            self.head_dim**-0.5,
            num_kv_heads=self.num_kv_heads,
            prefix=f"{prefix}.attn",
        )

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm:
            # Qwen3 normalises each head's q and k before RoPE.
            q = self.q_norm(q.reshape(-1, self.num_heads, self.head_dim)).reshape(q.shape)
            k = self.k_norm(k.reshape(-1, self.num_kv_heads, self.head_dim)).reshape(k.shape)
        # q and k are views of this layer's own qkv output: the rotation may overwrite them.
        q, k = self.rotary_emb(positions, q, k, inplace=True)
        attn_output = self.attn(q, k, v.contiguous())
        output, _ = self.o_proj(attn_output)
        return output


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _rope_scaling(config) -> dict | None:
    scaling = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None)
    if not scaling or scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        return None
    return dict(scaling)


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        config,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        **attention_kwargs,
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(
            config, quant_config=quant_config, prefix=f"{prefix}.self_attn", **attention_kwargs
        )
        self.mlp = LlamaMLP(
            config.hidden_size,
            config.intermediate_size,
            quant_config=quant_config,
            prefix=f"{prefix}.mlp",
        )
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class LlamaModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", **attention_kwargs) -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        quant_config = vllm_config.quant_config
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size,
            config.hidden_size,
            quant_config=quant_config,
            prefix=f"{prefix}.embed_tokens",
        )
        # Stage 8: a pipeline stage builds only its own layers [start_layer, end_layer).
        pp = get_pp_group()
        self.start_layer, self.end_layer = get_pp_indices(
            config.num_hidden_layers, pp.rank_in_group, pp.world_size
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(
                config, quant_config=quant_config, prefix=f"{prefix}.layers.{i}", **attention_kwargs
            )
            if self.start_layer <= i < self.end_layer
            else PPMissingLayer()
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        # input_ids, positions: [num_tokens] -> hidden_states: [num_tokens, hidden_size]
        if intermediate_tensors is None:  # the first (or only) stage embeds the tokens
            # A multimodal model (stage 10) passes inputs_embeds with image embeddings merged in.
            hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
            residual = None
        else:
            hidden_states = intermediate_tensors.hidden_states
            residual = intermediate_tensors.residual
        for layer in self.layers[self.start_layer : self.end_layer]:
            hidden_states, residual = layer(positions, hidden_states, residual)
        if not get_pp_group().is_last_rank:
            return IntermediateTensors(hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaForCausalLM(nn.Module):
    # checkpoint name -> (packed param name, shard id): vLLM's stacked_params_mapping.
    stacked_params_mapping = [
        (".qkv_proj", ".q_proj", "q"),
        (".qkv_proj", ".k_proj", "k"),
        (".qkv_proj", ".v_proj", "v"),
        (".gate_up_proj", ".gate_proj", 0),
        (".gate_up_proj", ".up_proj", 1),
    ]
    attention_kwargs: dict = {}

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model = LlamaModel(
            vllm_config=vllm_config, prefix=_join(prefix, "model"), **self.attention_kwargs
        )
        self.lm_head = ParallelLMHead(
            config.vocab_size,
            config.hidden_size,
            quant_config=vllm_config.quant_config,
            prefix=_join(prefix, "lm_head"),
        )
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors (HF names) into our packed parameters; return what was loaded."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        tied = getattr(self.config, "tie_word_embeddings", False)
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name or (tied and name == "lm_head.weight"):
                continue  # recomputed, or the same tensor as the embedding
            if is_pp_missing_parameter(name, self):
                continue  # another pipeline stage's layer
            for packed, ckpt, shard_id in self.stacked_params_mapping:
                if ckpt in name:
                    target = name.replace(ckpt, packed)
                    params[target].weight_loader(params[target], tensor, shard_id)
                    loaded.add(target)
                    break
            else:
                if name not in params:
                    raise ValueError(
                        f"checkpoint tensor {name!r} has no parameter in {type(self).__name__}"
                    )
                loader = getattr(params[name], "weight_loader", default_weight_loader)
                loader(params[name], tensor)
                loaded.add(name)
        missing = set(params) - loaded
        if tied:
            missing.discard("lm_head.weight")
        if missing:
            raise ValueError(f"weights missing from the checkpoint: {sorted(missing)[:8]}")
        return loaded


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
