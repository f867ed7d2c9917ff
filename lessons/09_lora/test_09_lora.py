"""Lesson 09: your LoRA forward must match PEFT's, your BGMV the engine's ops, your names its loader.

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`:
scaling and linear against PEFT's own lora.Linear layers on the tiny random Llama (plain and
rank-stabilized); shrink and expand against the engine's torch reference ops (vllm_mini/lora/ops/
torch_ops.py) on a mixed batch with slot -1 and zero-padded ranks; bgmv_fused: your shrink/expand
over the three slices of qkv_proj, with two PEFT adapters in two slots, gives each token exactly
what PEFT's q_proj, k_proj and v_proj give with that token's adapter; key and fused: your name
mapping against the engine's adapter loader, tensor by tensor.
"""

from __future__ import annotations

import pytest
import torch

from lessons._impl import load_impl
from vllm_mini.lora.lora_model import LoRAModel
from vllm_mini.lora.ops import torch_ops
from vllm_mini.lora.peft_helper import TARGET_MODULES

impl = load_impl(__file__)

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft_model(base, seed: int, **lora_kwargs):
    """The tiny Llama with a PEFT adapter of random (non-zero) A and B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(init_lora_weights=False, **lora_kwargs)  # not B = 0: a visible update
    return get_peft_model(model, config).eval()


def _peft_layer(model, layer: int, module: str):
    block = model.base_model.model.model.layers[layer]
    return getattr(block.self_attn, module, None) or getattr(block.mlp, module)


def _base(layer):
    """The frozen base nn.Linear (a module the adapter does not target is one already)."""
    return getattr(layer, "base_layer", layer)


def test_scaling():
    assert impl.lora_scaling(16, 8) == 2.0
    assert impl.lora_scaling(8, 16, use_rslora=True) == 2.0  # 8 / sqrt(16)
    assert impl.lora_scaling(32, 32, use_rslora=False) == 1.0


@pytest.mark.parametrize("use_rslora", [False, True])
def test_linear_matches_peft(tiny_llama_dir, use_rslora):
    model = _peft_model(
        tiny_llama_dir, 1, r=8, lora_alpha=16, use_rslora=use_rslora, target_modules=ALL
    )
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    for module in ("q_proj", "o_proj", "down_proj"):
        layer = _peft_layer(model, 1, module)
        inp = x if module != "down_proj" else torch.randn(5, 128)
        with torch.no_grad():
            expected = layer(inp)  # PEFT's own forward: base + scaled update
            mine = impl.lora_linear(
                inp,
                layer.base_layer.weight,
                layer.lora_A["default"].weight,
                layer.lora_B["default"].weight,
                16,
                use_rslora,
            )
        torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-5)


def _mixed_batch(gen: torch.Generator, max_rank: int = 8, in_size: int = 24, out: int = 20):
    """Three slots (ranks 8, 2, 5 zero-padded to 8), nine tokens, two of them base-model ones."""
    a = torch.randn(3, max_rank, in_size, generator=gen)
    b = torch.randn(3, out, max_rank, generator=gen)
    for slot, rank in enumerate([8, 2, 5]):
        a[slot, rank:] = 0
        b[slot, :, rank:] = 0
    x = torch.randn(9, in_size, generator=gen)
    indices = torch.tensor([0, 2, -1, 1, 1, 0, -1, 2, 2])
    return x, a, b, indices


def test_shrink_matches_the_engine():
    x, a, _, indices = _mixed_batch(torch.Generator().manual_seed(1))
    expected = torch.full((9, 8), float("nan"))  # the engine overwrites every row
    torch_ops.bgmv_shrink(x, a, expected, indices)
    mine = impl.bgmv_shrink(x, a, indices)
    torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-5)
    assert (mine[indices < 0] == 0).all(), "a token with slot -1 must shrink to zeros"


def test_expand_matches_the_engine():
    gen = torch.Generator().manual_seed(2)
    x, a, b, indices = _mixed_batch(gen)
    buf = torch.empty(9, 8)
    torch_ops.bgmv_shrink(x, a, buf, indices)
    y = torch.randn(9, 50, generator=gen)  # a fused output: this slice is columns 13..32
    expected = y.clone()
    torch_ops.bgmv_expand_slice(buf, b, expected, indices, 13)
    mine = impl.bgmv_expand(y.clone(), buf, b, indices, 13)
    torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine[indices < 0], y[indices < 0])  # base tokens untouched


def test_bgmv_fused_qkv_matches_peft(tiny_llama_dir):
    """Slot 0 and slot 1 hold two PEFT adapters of different ranks; each token picks one."""
    models = [
        _peft_model(tiny_llama_dir, 3, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        _peft_model(tiny_llama_dir, 4, r=8, lora_alpha=8, use_rslora=True, target_modules=ALL),
    ]
    names = ["q_proj", "k_proj", "v_proj"]
    base = [_base(_peft_layer(models[0], 0, n)).weight for n in names]
    sizes = [w.shape[0] for w in base]  # q 64, k 32, v 32
    offsets = [0, sizes[0], sizes[0] + sizes[1]]
    max_rank = 8
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(5))
    indices = torch.tensor([1, 0, -1, 0, 1, 1])
    with torch.no_grad():
        y = x @ torch.cat(base).T  # the fused qkv_proj's base output
        for i, name in enumerate(names):
            # Stack this slice's A and B over the slots; fold the scaling into B like the engine.
            a = torch.zeros(2, max_rank, 64)
            b = torch.zeros(2, sizes[i], max_rank)
            for slot, model in enumerate(models):
                layer = _peft_layer(model, 0, name)
                if hasattr(layer, "lora_A"):  # this adapter patches this slice
                    r = layer.r["default"]
                    a[slot, :r] = layer.lora_A["default"].weight
                    b[slot, :, :r] = layer.lora_B["default"].weight * layer.scaling["default"]
            buf = impl.bgmv_shrink(x, a, indices)
            impl.bgmv_expand(y, buf, b, indices, offsets[i])
        for t, slot in enumerate(indices.tolist()):
            ref_model = models[slot] if slot >= 0 else models[0]
            ref = []
            for name in names:
                layer = _peft_layer(ref_model, 0, name)
                ref.append(_base(layer)(x[t : t + 1]) if slot < 0 else layer(x[t : t + 1]))
            torch.testing.assert_close(y[t : t + 1], torch.cat(ref, dim=-1), rtol=1e-5, atol=1e-5)


def test_key_mapping():
    cases = {
        "base_model.model.model.layers.3.self_attn.k_proj.lora_A.weight": (
            "model.layers.3.self_attn.qkv_proj", 1, "A"),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": (
            "model.layers.0.self_attn.qkv_proj", 0, "B"),
        "base_model.model.model.layers.1.mlp.up_proj.lora_A.default.weight": (
            "model.layers.1.mlp.gate_up_proj", 1, "A"),
        "model.layers.2.mlp.down_proj.lora_B.weight": ("model.layers.2.mlp.down_proj", 0, "B"),
        "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight": (
            "model.layers.0.self_attn.o_proj", 0, "A"),
    }  # fmt: skip
    for key, expected in cases.items():
        assert impl.map_peft_key(key) == expected, key
    for bad in ("base_model.model.lm_head.lora_A.weight", "model.embed_tokens.weight"):
        with pytest.raises(ValueError):
            impl.map_peft_key(bad)


def test_fused_adapter_equals_the_engine_loader(tiny_llama_dir, tmp_path):
    """Map every tensor of a saved PEFT adapter yourself; the engine's loader must agree."""
    from safetensors.torch import load_file

    model = _peft_model(tiny_llama_dir, 6, r=4, lora_alpha=12, target_modules=ALL)
    model.save_pretrained(tmp_path)
    mine: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(tmp_path / "adapter_model.safetensors")).items():
        layer, index, which = impl.map_peft_key(key)
        mine.setdefault((layer, index), {})[which] = tensor
    scaling = impl.lora_scaling(12, 4)
    shapes = {target: (ab["A"].shape[1], ab["B"].shape[0]) for target, ab in mine.items()}
    engine = LoRAModel.from_local_checkpoint(tmp_path, 1, 16, shapes)
    assert set(mine) == set(engine.layers)
    assert len(mine) == 2 * len(TARGET_MODULES)  # 2 layers x 7 modules
    for target, weights in engine.layers.items():
        torch.testing.assert_close(mine[target]["A"], weights.lora_a)
        torch.testing.assert_close(mine[target]["B"] * scaling, weights.lora_b)


@pytest.mark.demo
def test_demo_serves_both_adapters_beside_the_base_model(capsys):
    demo = load_impl(__file__, "demo")
    result = demo.main()
    out = capsys.readouterr().out
    assert "all equal to PEFT: True" in out
    rows = {(tuple(r["prompt"]), r["adapter"]): r["tokens"] for r in result["rows"]}
    prompt = tuple(demo.PROMPT)
    assert rows[(prompt, "sevens")] == [7] * demo.MAX_TOKENS
    assert rows[(prompt, "count")] == list(range(43, 43 + demo.MAX_TOKENS))
    assert rows[(prompt, None)] not in (rows[(prompt, "sevens")], rows[(prompt, "count")])
    # One prefill step with a segment per request, then decode steps with a slot per token.
    assert [slot for _, _, slot in result["steps"][0]] == [-1, 0, 1, -1, 0, 1]
    assert result["steps"][1] == [-1, 0, 1, -1, 0, 1]
