"""Lesson 02 demo: load SmolLM2 from its GGUF and look inside, step by step.

1. the registry maps the checkpoint's architecture name to our class;
2. one Q4_1 block of the GGUF, decoded by hand;
3. why the loader un-permutes q/k rows (llama.cpp's RoPE pairs dimensions differently);
4. the loaded model's packed layers, and its logits against HF transformers';
5. tensor parallelism: the real layer-0 MLP split over 3 simulated ranks.

.venv/bin/python lessons/02_model_loading/demo.py   (about 30 s on a laptop CPU)
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import AutoModelForCausalLM

from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.distributed import simulate_tensor_parallel
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.forward_context import set_forward_context
from vllm_mini.model_executor.layers.rotary_embedding import RotaryEmbedding
from vllm_mini.model_executor.model_loader import get_model
from vllm_mini.model_executor.model_loader.gguf_loader import reverse_permute_qk
from vllm_mini.model_executor.models import ModelRegistry
from vllm_mini.model_executor.models.llama import LlamaMLP


def show_q4_1_block(reader: GGUFReader) -> bool:
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_k.weight")
    block = tensor.data.reshape(-1, 20)[0]  # 20 bytes: d (f16), m (f16), 16 bytes of nibbles
    d, m = block[0:2].view(np.float16)[0], block[2:4].view(np.float16)[0]
    q = np.concatenate([block[4:] & 0x0F, block[4:] >> 4])  # weights 0-15 low, 16-31 high nibble
    by_hand = d.astype(np.float32) * q + m.astype(np.float32)
    library = dequantize(tensor.data, tensor.tensor_type).reshape(-1)[:32]
    same = bool(np.array_equal(by_hand, library))
    print(f"\n[2] Q4_1 block 0 of blk.0.attn_k: d={d:.5f} m={m:.5f} q[:8]={q[:8].tolist()}")
    print(f"    by hand == gguf.dequantize: {same}")
    print(f"    {tensor.data.nbytes / tensor.n_elements:.3f} bytes per weight (float32: 4)")
    return same


def rope_adjacent_pairs(x: torch.Tensor, positions: torch.Tensor, head: int) -> torch.Tensor:
    """llama.cpp's RoPE: rotate dimension pairs (2i, 2i+1) of each head."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head, 2).float() / head))
    angle = positions.float()[:, None, None] * inv_freq  # [T, 1, head/2]
    pairs = x.view(x.shape[0], -1, head // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()], -1)


def show_qk_permutation(reader: GGUFReader, n_kv_heads: int, head: int) -> bool:
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_k.weight")
    w_gguf = dequantize(tensor.data, tensor.tensor_type)  # [192, 576], rows in llama.cpp order
    w_hf = torch.from_numpy(reverse_permute_qk(w_gguf, n_kv_heads))
    x, positions = torch.randn(4, w_hf.shape[1]), torch.tensor([0, 1, 7, 100])
    k_hf = x @ w_hf.T  # HF layout: RoPE pairs dimension i with i + head/2
    k_gguf = x @ torch.from_numpy(w_gguf).T
    ours, _ = RotaryEmbedding(head, head, 512, 10000.0)(positions, k_hf, k_hf)
    theirs = rope_adjacent_pairs(k_gguf, positions, head).reshape(4, -1)
    back = torch.from_numpy(reverse_permute_qk(theirs.T.numpy(), n_kv_heads)).T
    same = torch.allclose(ours, back, atol=1e-4)
    print("\n[3] RoPE(x @ W_hf) == unpermute(llama.cpp RoPE(x @ W_gguf)):", same)
    return same


def compare_with_hf(model: torch.nn.Module, gguf_file) -> float:
    ids = torch.tensor([1, 504, 3575, 282, 4649, 314])
    n = len(ids)
    # One sequence of n new tokens; the naive backend only reads the query/sequence bounds.
    meta = AttentionMetadata(
        num_actual_tokens=n,
        max_query_len=n,
        max_seq_len=n,
        query_start_loc=torch.tensor([0, n], dtype=torch.int32),
        seq_lens=torch.tensor([n], dtype=torch.int32),
        block_table=torch.zeros(1, 1, dtype=torch.int32),
        slot_mapping=torch.zeros(n, dtype=torch.int64),
        query_start_loc_cpu=[0, n],
        seq_lens_cpu=[n],
        req_ids=["demo"],
    )
    with set_forward_context(meta), torch.inference_mode():
        ours = model.compute_logits(model(ids, torch.arange(n)))
    hf = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        theirs = hf(ids.unsqueeze(0)).logits[0]
    diff = (ours - theirs).abs().max().item()
    print(f"    max |logits - HF logits| over {n} positions: {diff:.2e}")
    return diff


def show_tensor_parallel_mlp(mlp: LlamaMLP, hidden: int, inter: int, tp: int = 3) -> bool:
    gate, up = mlp.gate_up_proj.weight.split(inter)
    ranks = []
    for rank in range(tp):
        with simulate_tensor_parallel(rank, tp):
            part = LlamaMLP(hidden, inter, prefix="mlp")
        part.gate_up_proj.weight.weight_loader(part.gate_up_proj.weight, gate, 0)
        part.gate_up_proj.weight.weight_loader(part.gate_up_proj.weight, up, 1)
        part.down_proj.weight.weight_loader(part.down_proj.weight, mlp.down_proj.weight)
        ranks.append(part)
    x = torch.randn(3, hidden)
    with torch.inference_mode():
        # Column-parallel gate_up needs no communication; row-parallel down_proj leaves partial
        # sums that one all-reduce adds up (here: a Python sum). Megatron-LM, section 3.
        combined = sum(part(x) for part in ranks)
        full = mlp(x)
    # Equal up to float32 rounding, measured RELATIVE to the outputs' size. Each output is a sum
    # of `inter` products; the ranks add it as tp partial sums and the full layer in one (its
    # weight column-major after process_weights_after_loading, so sgemm even blocks it
    # differently): same terms, another order, other roundings. Rounding error scales with the
    # values, and layer 0's outputs reach ~1,400, where one float32 step is 1.2e-4: a fixed
    # atol=1e-4 rejects correct shards. A wrong shard is off by O(the outputs), not 1e-5 of them.
    scale = full.abs().max().item()
    err = (combined - full).abs().max().item()
    same = err <= 1e-5 * scale
    print(f"\n[5] MLP over {tp} ranks: gate_up {tuple(ranks[0].gate_up_proj.weight.shape)}", end="")
    print(f", down {tuple(ranks[0].down_proj.weight.shape)} per rank")
    print(f"    outputs up to {scale:.0f}; max |sum of ranks - full MLP| = {err:.1e}", end="")
    print(f" ({err / scale:.1e} of the largest)")
    print(f"    sum of rank outputs == full MLP (to float32 rounding): {same}")
    return same


def main() -> dict[str, float | bool]:
    """Run the five sections; return what each found (lessons/02's test checks them)."""
    # dtype="float32": this lesson's loader dequantizes the GGUF (stage 7's default, the `gguf`
    # method, would keep the file's quantized blocks instead of float weights).
    config = EngineArgs(attention_backend="naive", dtype="float32").create_engine_config()
    mc, hf_config = config.model_config, config.model_config.hf_config
    print(
        "[1] architecture:",
        mc.architecture,
        "->",
        ModelRegistry.resolve_model_cls([mc.architecture]),
    )
    print("    supported:", ModelRegistry.get_supported_archs())

    reader = GGUFReader(str(mc.source.gguf_file))
    head = hf_config.hidden_size // hf_config.num_attention_heads
    results: dict[str, float | bool] = {
        "q4_1_by_hand": show_q4_1_block(reader),
        "rope_permutation": show_qk_permutation(reader, hf_config.num_key_value_heads, head),
    }

    model = get_model(config)
    layer = model.model.layers[0]
    print(
        "\n[4] qkv_proj",
        tuple(layer.self_attn.qkv_proj.weight.shape),
        "= q 576 + k 192 + v 192 rows",
    )
    print(
        "    gate_up_proj", tuple(layer.mlp.gate_up_proj.weight.shape), "= gate 1536 + up 1536 rows"
    )
    print(
        "    lm_head tied to embed_tokens:", model.lm_head.weight is model.model.embed_tokens.weight
    )
    results["tied_lm_head"] = model.lm_head.weight is model.model.embed_tokens.weight
    results["max_logit_diff"] = compare_with_hf(model, mc.source.gguf_file)
    results["tensor_parallel_mlp"] = show_tensor_parallel_mlp(
        layer.mlp, hf_config.hidden_size, hf_config.intermediate_size
    )
    return results


if __name__ == "__main__":
    main()
