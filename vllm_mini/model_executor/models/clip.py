"""CLIP vision tower: an image's pixels -> one hidden vector per 14x14 (here 8x8) patch.

Stage 10. Mirrors vllm/model_executor/models/clip.py. A Vision Transformer (Dosovitskiy et al.,
2021): a strided convolution cuts the image into patches and embeds each one; a learned CLS vector
is prepended; position embeddings are added; then plain pre-norm transformer layers with FULL
(bidirectional) attention run over the patches. Unlike the language model this encoder has no KV
cache and no causal mask: an image is encoded in one shot, which is why the engine can cache its
output (core/encoder_cache_manager.py). LLaVA reads an inner layer's output, so only the layers up
to it are built (vLLM's num_hidden_layers_override). Next: llava.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from vllm_mini.model_executor.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm_mini.model_executor.model_loader.weight_utils import default_weight_loader


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)  # CLIP's activation: a cheap sigmoid fit of GELU


_ACTIVATIONS = {"quick_gelu": _quick_gelu, "gelu": F.gelu}


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.image_size, self.patch_size = config.image_size, config.patch_size
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        # A conv with stride == kernel == patch size is "cut into patches, then one matmul each".
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=False,
        )
        self.num_positions = (config.image_size // config.patch_size) ** 2 + 1  # + CLS
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: [num_images, 3, H, W] -> [num_images, 1 + num_patches, hidden]
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)  # [n, hidden, gh, gw] -> [n, gh*gw, hidden]
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class CLIPAttention(nn.Module):
    """Bidirectional multi-head attention over one image's patches (no KV cache)."""

    def __init__(self, config, prefix: str = "") -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size,
            self.head_dim,
            self.num_heads,
            self.num_heads,
            bias=True,
            prefix=f"{prefix}.qkv_proj",
        )
        self.num_heads = self.qkv_proj.num_heads  # heads on this rank (all at tp=1)
        self.out_proj = RowParallelLinear(
            config.hidden_size, config.hidden_size, bias=True, prefix=f"{prefix}.out_proj"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, seq, _ = x.shape
        qkv, _ = self.qkv_proj(x)
        # [n, seq, 3 * hidden] -> three [n, heads, seq, head_dim]
        q, k, v = qkv.view(n, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # no mask: every patch sees every patch
        out, _ = self.out_proj(out.transpose(1, 2).reshape(n, seq, -1))
        return out


class CLIPMLP(nn.Module):
    def __init__(self, config, prefix: str = "") -> None:
        super().__init__()
        self.fc1 = ColumnParallelLinear(
            config.hidden_size, config.intermediate_size, bias=True, prefix=f"{prefix}.fc1"
        )
        self.fc2 = RowParallelLinear(
            config.intermediate_size, config.hidden_size, bias=True, prefix=f"{prefix}.fc2"
        )
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.fc1(x)
        x, _ = self.fc2(self.act(x))
        return x


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config, prefix: str = "") -> None:
        super().__init__()
        self.self_attn = CLIPAttention(config, prefix=f"{prefix}.self_attn")
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config, prefix=f"{prefix}.mlp")
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPVisionModel(nn.Module):
    """Embeddings, pre-norm, and the first `num_hidden_layers_override` encoder layers.

    forward returns the output of the last built layer, which is the hidden state LLaVA selects
    (vision_feature_layer); the post-norm only runs when every layer is built.
    """

    # checkpoint name -> (packed param name, shard id), as in llama.py
    stacked_params_mapping = [
        (".qkv_proj", ".q_proj", "q"),
        (".qkv_proj", ".k_proj", "k"),
        (".qkv_proj", ".v_proj", "v"),
    ]

    def __init__(self, config, num_hidden_layers_override: int | None = None, prefix: str = ""):
        super().__init__()
        num_layers = config.num_hidden_layers
        if num_hidden_layers_override is not None:
            num_layers = num_hidden_layers_override
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(config, prefix=f"{prefix}.encoder.layers.{i}")
            for i in range(num_layers)
        )
        self.post_layernorm = None
        if num_layers == config.num_hidden_layers:
            self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # [num_images, 3, H, W] -> [num_images, 1 + num_patches, vision_hidden]
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.layers:
            x = layer(x)
        return x if self.post_layernorm is None else self.post_layernorm(x)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """HF CLIPVisionModel names (with or without the `vision_model.` level) -> ours."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("vision_model.").replace("encoder.layers.", "layers.")
            if name.startswith("layers.") and int(name.split(".")[1]) >= len(self.layers):
                continue  # a layer after the one LLaVA reads: never run, never loaded
            if name.startswith("post_layernorm.") and self.post_layernorm is None:
                continue
            for packed, ckpt, shard_id in self.stacked_params_mapping:
                if ckpt in name:
                    target = name.replace(ckpt, packed)
                    params[target].weight_loader(params[target], tensor, shard_id)
                    loaded.add(target)
                    break
            else:
                if name not in params:
                    raise ValueError(f"checkpoint tensor {name!r} has no parameter in CLIP")
                loader = getattr(params[name], "weight_loader", default_weight_loader)
                loader(params[name], tensor)
                loaded.add(name)
        return loaded
