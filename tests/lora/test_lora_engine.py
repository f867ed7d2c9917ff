"""Multi-LoRA serving, proven against PEFT: each request's output is PEFT's with its adapter.

The adapters are made by PEFT itself on a tiny random Llama (random non-zero A and B, different
ranks and target modules, one with rank-stabilized scaling) and one trained for a few dozen steps
so that it visibly changes what the model says. One batch mixes the base model and the adapters;
the references are PEFT's own `generate` with each adapter, greedy, token for token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import make_tiny_checkpoint
from vllm_mini import LLM, SamplingParams
from vllm_mini.lora.request import LoRARequest

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], list(range(3, 30)), [100, 101, 102], list(range(200, 260))]
MAX_TOKENS = 10


def _peft_model(base: Path, lora_dir: Path | None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    if lora_dir is not None:
        model = PeftModel.from_pretrained(model, lora_dir)
    return model.eval()


def _make_adapter(base: Path, out: Path, seed: int, **lora_kwargs) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(init_lora_weights=False, **lora_kwargs),  # random A and B, not B = 0
    )
    model.save_pretrained(out)
    return out


def _train_adapter(base: Path, out: Path) -> Path:
    """A few dozen steps teaching the model to answer [40, 41, 42] with [7, 7, 7, 7, ...]."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    ids = torch.tensor([[40, 41, 42] + [7] * 8])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(40):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lora")
    base = make_tiny_checkpoint(root / "base", "llama")
    made = {
        "qv8": _make_adapter(base, root / "qv8", 1, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        "all4": _make_adapter(base, root / "all4", 2, r=4, lora_alpha=8, target_modules=ALL),
        "mlp16rs": _make_adapter(base, root / "mlp16rs", 3, r=16, lora_alpha=8, use_rslora=True,
                                 target_modules=["gate_proj", "up_proj", "down_proj"]),
        "trained": _train_adapter(base, root / "trained"),
    }  # fmt: skip
    requests = {
        name: LoRARequest(name, i + 1, str(path)) for i, (name, path) in enumerate(made.items())
    }
    refs = {}
    for name in [None, *made]:
        model = _peft_model(base, made.get(name))
        with torch.inference_mode():
            refs[name] = [
                model.generate(
                    input_ids=torch.tensor([p]),
                    max_new_tokens=MAX_TOKENS,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                )[0, len(p) :].tolist()
                for p in PROMPTS
            ]
    return {"base": base, "paths": made, "requests": requests, "refs": refs}


def _generate(llm: LLM, adapters: dict, plan: list[tuple[int, str | None]]) -> list[list[int]]:
    prompts = [{"prompt_token_ids": PROMPTS[p]} for p, _ in plan]
    loras = [adapters["requests"][name] if name else None for _, name in plan]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
    assert llm.llm_engine.engine_core.scheduler.kv_cache_manager.usage == 0.0
    return [list(o.outputs[0].token_ids) for o in outs]


MIXED = [(0, None), (0, "qv8"), (1, "all4"), (2, "mlp16rs"), (1, None), (3, "qv8"), (2, "all4")]


def test_adapters_change_the_output(adapters):
    refs = adapters["refs"]
    for name in ("qv8", "all4", "mlp16rs", "trained"):
        assert refs[name] != refs[None], f"adapter {name} changes nothing: a vacuous reference"


def test_one_batch_of_base_and_three_adapters_equals_peft(adapters):
    llm = LLM(str(adapters["base"]), enable_lora=True, max_loras=4, max_lora_rank=16)
    outs = _generate(llm, adapters, MIXED)
    for (p, name), out in zip(MIXED, outs):
        assert out == adapters["refs"][name][p], f"prompt {p} with adapter {name}"


def test_chunked_prefill_preemption_and_more_adapters_than_slots(adapters):
    llm = LLM(
        str(adapters["base"]),
        enable_lora=True,
        max_loras=2,  # three adapters, two slots: the scheduler splits steps, slots are reused
        max_cpu_loras=2,  # and the CPU cache evicts, so adapters are read from disk again
        max_lora_rank=16,
        max_num_batched_tokens=16,  # the 27- and 60-token prompts are chunked
        num_gpu_blocks_override=14,  # and the cache is too small for everyone: preemption
        block_size=8,
    )
    outs = _generate(llm, adapters, MIXED + [(3, "mlp16rs"), (0, "all4")])
    for (p, name), out in zip(MIXED + [(3, "mlp16rs"), (0, "all4")], outs):
        assert out == adapters["refs"][name][p], f"prompt {p} with adapter {name}"
    manager = llm.llm_engine.engine_core.worker.model_runner.lora_manager
    assert manager.num_slot_loads > 3  # adapters went in and out of the two slots
    assert llm.llm_engine.engine_core.scheduler.num_preemptions > 0


def test_trained_adapter_visibly_changes_behaviour(adapters):
    llm = LLM(str(adapters["base"]), enable_lora=True, max_lora_rank=8)
    trained = adapters["requests"]["trained"]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    prompt = {"prompt_token_ids": [40, 41, 42]}
    tuned = llm.generate([prompt], params, lora_request=trained, use_tqdm=False)[0]
    plain = llm.generate([prompt], params, use_tqdm=False)[0]
    assert tuned.outputs[0].token_ids == [7] * 6  # what it was taught
    assert plain.outputs[0].token_ids != [7] * 6


def test_prefix_cache_never_shares_blocks_across_adapters(adapters):
    llm = LLM(str(adapters["base"]), enable_lora=True, max_loras=2, enable_prefix_caching=True)
    core = llm.llm_engine.engine_core
    plan = [(3, "qv8"), (3, "all4"), (3, None), (3, "qv8")]
    outs = [_generate(llm, adapters, [step])[0] for step in plan]
    for (p, name), out in zip(plan, outs):
        assert out == adapters["refs"][name][p]
    # Only the last request, same adapter as the first, found its 60-token prompt cached.
    stats = core.scheduler.kv_cache_manager.prefix_cache_stats
    assert stats.hits == (len(PROMPTS[3]) - 1) // 16 * 16


def _rewrite(src: Path, dst: Path, **config_changes) -> Path:
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    config.update(config_changes)
    (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst


def test_bad_adapters_are_clear_errors_and_the_engine_keeps_serving(adapters, tmp_path):
    base, paths = adapters["base"], adapters["paths"]
    llm = LLM(str(base), enable_lora=True, max_lora_rank=8)
    other = make_tiny_checkpoint(tmp_path / "bigger", "llama", hidden_size=96, intermediate_size=64)
    wrong_model = _make_adapter(other, tmp_path / "wrong", 4, r=4, target_modules=["q_proj"])
    missing_weights = _rewrite(paths["qv8"], tmp_path / "noweights")
    (missing_weights / "adapter_model.safetensors").unlink()
    cases = [
        (LoRARequest("big", 11, str(paths["mlp16rs"])), "rank 16, above max_lora_rank=8"),
        (LoRARequest("lm", 12, str(_rewrite(paths["qv8"], tmp_path / "lm", target_modules=["lm_head"]))),
         r"targets modules \['lm_head'\]"),
        (LoRARequest("shape", 13, str(wrong_model)), "was it trained for another model"),
        (LoRARequest("gone", 14, str(tmp_path / "nowhere")), "has no adapter_config.json"),
        (LoRARequest("noweights", 15, str(missing_weights)), "has no adapter_model.safetensors"),
    ]  # fmt: skip
    params = SamplingParams(max_tokens=3)
    for request, message in cases:
        with pytest.raises(ValueError, match=message):
            llm.generate([{"prompt_token_ids": [1, 2, 3]}], params, lora_request=request)
    prompt = [{"prompt_token_ids": [1, 2]}]
    llm.generate(prompt, params, lora_request=LoRARequest("qv8", 1, str(paths["qv8"])))
    with pytest.raises(ValueError, match="lora_int_id 1 is already 'qv8'"):
        llm.generate(prompt, params, lora_request=LoRARequest("x", 1, str(paths["all4"])))
    with pytest.raises(ValueError, match="LoRA is off"):
        LLM(str(base)).generate([{"prompt_token_ids": [1, 2]}], params, lora_request=cases[0][0])
    # Still serving, nothing leaked.
    assert _generate(llm, adapters, [(0, "qv8")])[0] == adapters["refs"]["qv8"][0]
    assert not llm.llm_engine.has_unfinished_requests()


@pytest.mark.slow
def test_smollm2_with_a_peft_adapter_equals_peft(tmp_path):
    """The real model (float32, the GGUF read by transformers) with a PEFT adapter on every
    projection: vllm_mini's greedy tokens equal PEFT's, and differ from the base model's."""
    from peft import LoraConfig, get_peft_model

    from benchmarks.common import load_hf_peer

    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=ALL, init_lora_weights=False)
    peft_model = get_peft_model(load_hf_peer(None, torch.float32), config)
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data.mul_(0.3)  # enough to change the answer, not enough to make noise
    peft_model.save_pretrained(tmp_path / "smol_lora")
    prompt = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018]
    with torch.inference_mode():
        ref = peft_model.generate(
            input_ids=torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )[0, len(prompt) :].tolist()  # fmt: skip
    llm = LLM(dtype="float32", enable_lora=True, max_lora_rank=8)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    lora = LoRARequest("smol", 1, str(tmp_path / "smol_lora"))
    tuned, plain = llm.generate(
        [{"prompt_token_ids": prompt}] * 2, params, lora_request=[lora, None], use_tqdm=False
    )
    assert tuned.outputs[0].token_ids == ref
    assert plain.outputs[0].token_ids != ref


def test_lora_with_ngram_speculation_equals_peft(adapters):
    """Drafts verified under each request's adapter: speculation changes no token."""
    llm = LLM(
        str(adapters["base"]),
        enable_lora=True,
        max_loras=4,
        max_lora_rank=16,
        speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                            "prompt_lookup_min": 1, "prompt_lookup_max": 2},
    )  # fmt: skip
    outs = _generate(llm, adapters, MIXED)
    for (p, name), out in zip(MIXED, outs):
        assert out == adapters["refs"][name][p], f"prompt {p} with adapter {name}"
    assert llm.llm_engine.engine_core.scheduler.spec_decoding_stats.num_draft_tokens > 0
