"""The CPU backend's planned path equals the pure-torch reference (paged_attn_torch).

A step mixes decodes, short queries (draft verification), fresh prompts (q_len == seq_len) and
prefill chunks after a cached prefix, in orders that leave the kernel's rows one range or
scattered. Each is run with the kernel taking every sequence (the default threshold) and with a
threshold of 8, which sends the long ones to SDPA; with the layer's new K/V handed on (a fresh
prompt then never reads the cache) and without; fp32 and bf16, GQA and MHA. The plan is built once
per engine step, not once per layer.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vllm_mini.attention.ops import is_paged_attention_available, paged_attn_torch

pytestmark = pytest.mark.skipif(
    not is_paged_attention_available("cpu"), reason="C++ build unavailable"
)
from tests.kernels.test_paged_attention import TOL, _case  # noqa: E402

MIXES = {
    "decodes_then_prompts": ([1, 1, 3, 40, 17, 64], [30, 5, 12, 0, 0, 0]),
    "prompts_between_decodes": ([1, 33, 1, 25, 4, 1], [9, 0, 70, 0, 21, 2]),
    "chunks_after_prefix": ([1, 24, 50, 1], [40, 33, 100, 7]),
    "only_prefills": ([20, 45, 12], [0, 31, 0]),
}


def _run(mix, dtype, num_kv_heads, group, kernel_max_query, pass_new_kv, zero_fresh_cache=False):
    from vllm_mini.attention.ops.cpu_attn_plan import build_plan
    from vllm_mini.attention.ops.cpu_paged_attn import run_plan

    q_lens, ctx_lens = MIXES[mix]
    head_size, block_size = 64, 16
    query, kc, vc, bt, sl, qsl, k_all, v_all = _case(
        block_size, head_size, num_kv_heads, group, dtype, q_lens, ctx_lens, seed=7
    )
    scale = head_size**-0.5
    ref = paged_attn_torch.paged_attention(
        query, kc, vc, bt, sl, qsl, max(q_lens), int(sl.max()), scale
    )
    key = torch.cat([k[-n:] for k, n in zip(k_all, q_lens)])  # the step's new K/V
    value = torch.cat([v[-n:] for v, n in zip(v_all, q_lens)])
    plan = build_plan(qsl.tolist(), sl.tolist(), qsl, sl, bt, block_size, kernel_max_query)
    if zero_fresh_cache:  # a fresh prompt must take its K/V from `key`/`value`, not the cache
        for seq in plan.prefills:
            if seq.fresh:
                kc[seq.block_ids] = 0
                vc[seq.block_ids] = 0
    new_kv = (key, value) if pass_new_kv else (None, None)
    out = run_plan(query, *new_kv, kc, vc, plan, scale)
    return out, ref, plan


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("num_kv_heads", "group"), [(3, 3), (4, 1)], ids=["gqa", "mha"])
@pytest.mark.parametrize("kernel_max_query", [8, 1024], ids=["sdpa_prefill", "all_kernel"])
@pytest.mark.parametrize("pass_new_kv", [True, False], ids=["new_kv", "from_cache"])
@pytest.mark.parametrize("mix", list(MIXES))
def test_planned_path_matches_the_reference(
    mix, dtype, num_kv_heads, group, kernel_max_query, pass_new_kv
):
    out, ref, plan = _run(mix, dtype, num_kv_heads, group, kernel_max_query, pass_new_kv)
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])
    q_lens = MIXES[mix][0]
    assert len(plan.prefills) == sum(n > kernel_max_query for n in q_lens)


def test_fresh_prompts_use_the_new_kv_not_the_cache():
    out, ref, plan = _run("decodes_then_prompts", torch.float32, 3, 3, 8, True, True)
    assert sum(seq.fresh for seq in plan.prefills) == 3
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)  # ref read the cache before


def test_plan_shapes_for_one_range_and_scattered_kernel_rows():
    from vllm_mini.attention.ops.cpu_attn_plan import build_plan

    def plan_for(q_lens, ctx_lens):
        _, _, _, bt, sl, qsl, _, _ = _case(16, 64, 1, 1, torch.float32, q_lens, ctx_lens)
        return build_plan(qsl.tolist(), sl.tolist(), qsl, sl, bt, 16, 8)

    together = plan_for([1, 2, 30, 9], [5, 5, 0, 3])  # kernel rows 0:3, one slice
    assert together.kernel_rows == slice(0, 3)
    assert together.kernel_query_start_loc.tolist() == [0, 1, 3]
    assert [(s.lo, s.hi, s.seq_len, s.fresh) for s in together.prefills] == [
        (3, 33, 30, True),
        (33, 42, 12, False),
    ]
    scattered = plan_for([1, 30, 2], [5, 0, 5])
    assert scattered.kernel_rows.tolist() == [0, 31, 32]
    assert scattered.kernel_seq_lens.tolist() == [6, 7]
    assert plan_for([12, 30], [0, 4]).kernel_rows is None


def test_engine_builds_one_plan_per_step(tiny_llama_dir, monkeypatch):
    from vllm_mini import LLM, SamplingParams
    from vllm_mini.attention.backends import paged

    built = []
    real = paged.build_plan

    def counted(*args, **kwargs):
        built.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(paged, "build_plan", counted)
    llm = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)
    assert llm.llm_engine.vllm_config.attention_config.backend == "cpu"
    params = SamplingParams(temperature=0.0, max_tokens=3)
    llm.generate(["a b c d e f g h i j", "hello"], params, use_tqdm=False)
    # Prefill step, then two decode steps: three plans, whatever the number of layers (> 1).
    num_layers = len(llm.llm_engine.vllm_config.compilation_config.static_forward_context)
    assert num_layers > 1 and len(built) == 3


def test_a_replaced_metadata_starts_with_an_empty_cache():
    from vllm_mini.attention.backends.abstract import AttentionMetadata

    empty = torch.zeros(0, dtype=torch.int32)
    meta = AttentionMetadata(0, 1, 1, empty, empty, empty, empty.long(), [0], [], [])
    meta.backend_cache["cpu/16"] = "plan"
    assert replace(meta, max_seq_len=2).backend_cache == {}
