"""Lesson 04 demo: KV-cache sizing, one real step's paged metadata, a block's life, the waste of
contiguous vs paged allocation on 64 mixed requests, and the kernels side by side.

Runs on a tiny random Llama (built like tests/conftest.py does) and on the engine's classes
directly; nothing is downloaded. The C++ kernel was compiled when the package was installed.

    .venv/bin/python lessons/04_paged_kv_cache/demo.py       (about 10 s once compiled)
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import make_tiny_checkpoint  # noqa: E402
from tests.kernels.test_paged_attention import _case  # noqa: E402
from vllm_mini import LLM, SamplingParams  # noqa: E402
from vllm_mini.attention.backends.naive import naive_attention  # noqa: E402
from vllm_mini.attention.ops import get_paged_attention_ops, is_paged_attention_available  # noqa: E402
from vllm_mini.core.kv_cache_manager import KVCacheManager  # noqa: E402
from vllm_mini.core.kv_cache_utils import get_num_blocks, get_request_block_hasher  # noqa: E402
from vllm_mini.request import Request  # noqa: E402


def section(title: str) -> None:
    print(f"\n=== {title}")


def sizing() -> dict[int, int]:
    """Section 1; returns block_size -> number of blocks in 1 GiB."""
    section("1. Sizing the cache: SmolLM2-135M's shapes (30 layers, 3 KV heads of 64), float32")
    blocks = {}
    for block_size in (16, 32):
        per_block = 2 * 30 * block_size * 3 * 64 * 4
        n = get_num_blocks(1 << 30, 30, block_size, 3, 64, torch.float32)
        print(
            f"   block_size {block_size}: {per_block:,} bytes per block (K and V, all layers); "
            f"1 GiB -> {n} blocks = {n * block_size:,} token slots"
        )
        blocks[block_size] = n
    return blocks


def one_step(model_dir: Path) -> dict[str, Any]:
    """Section 2; returns the block tables, the step's metadata and the K slots written."""
    section("2. One real step: a decode and a prefill chunk in the same batch (block_size 4)")
    llm = LLM(
        str(model_dir), block_size=4, max_num_batched_tokens=16, kv_cache_memory_bytes=1 << 22
    )
    engine = llm.llm_engine
    runner = engine.engine_core.worker.model_runner
    original, seen = runner._prepare_inputs, []

    def spy(so, req_ids):
        ids, pos, meta = original(so, req_ids)
        seen.append((req_ids, pos, meta))
        return ids, pos, meta

    runner._prepare_inputs = spy  # an instance attribute shadows the method, for this demo only
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    engine.add_request("A", {"prompt_token_ids": list(range(20, 30))}, params)  # 10 tokens
    engine.add_request("B", {"prompt_token_ids": list(range(40, 54))}, params)  # 14 tokens
    engine.step()  # A's whole prompt (10) + the first 6 of B's: the 16-token budget
    engine.step()  # A decodes 1 token; B runs its next 8
    req_ids, positions, meta = seen[1]
    kv = engine.engine_core.scheduler.kv_cache_manager
    for r in req_ids:
        print(f"   {r}: block table {kv.get_block_ids(r)}")
    print(f"   positions       {positions.tolist()}")
    print(f"   query_start_loc {meta.query_start_loc.tolist()}   (rows of each request)")
    print(f"   seq_lens        {meta.seq_lens.tolist()}   (context after this step)")
    print(f"   block_table     {meta.block_table.tolist()}   (int32, zero padded)")
    print(f"   slot_mapping    {meta.slot_mapping.tolist()}")
    print("   slot = block_table[pos // 4] * 4 + pos % 4; reshape_and_cache writes K/V there")
    key_cache = runner.attn_layers[0].kv_cache[0]  # [num_blocks, block_size, kv_heads, D]
    written = (key_cache.flatten(0, 1).abs().sum((1, 2)) != 0).nonzero().flatten().tolist()
    print(f"   layer 0's non-zero K slots after two steps: {written}")
    return {
        "block_ids": {r: kv.get_block_ids(r) for r in req_ids},
        "positions": positions.tolist(),
        "query_start_loc": meta.query_start_loc.tolist(),
        "seq_lens": meta.seq_lens.tolist(),
        "block_table": meta.block_table.tolist(),
        "slot_mapping": meta.slot_mapping.tolist(),
        "written": written,
    }


def lifecycle() -> dict[str, Any]:
    """Section 3; returns what each event did to the pool."""
    section("3. A block's life: free -> owned -> cached-free -> owned again / evicted")
    kv = KVCacheManager(num_blocks=6, block_size=4, max_model_len=64, enable_caching=True)
    hasher = get_request_block_hasher(4)
    params = SamplingParams(max_tokens=1)

    def admit(name: str, tokens: list[int]) -> Request | None:
        req = Request(name, tokens, params, eos_token_id=None, block_hasher=hasher)
        hits, num_hit = kv.get_computed_blocks(req)
        new = kv.allocate_slots(req, len(tokens) - num_hit, num_hit, hits)
        if new is None:
            print(f"   {name} ({len(tokens)} tokens): allocate_slots -> None; nothing changed")
            return None
        # The step runs and its forward pass writes these tokens' K/V; the scheduler records that
        # in num_computed_tokens. free() keeps the hashes of written blocks only (a block freed
        # before its forward pass never got its K/V, so it must not be found by a later request).
        req.num_computed_tokens = len(tokens)
        found[name] = num_hit
        print(
            f"   {name} ({len(tokens)} tokens): {num_hit} from the prefix cache, "
            f"block table {kv.get_block_ids(name)}"
        )
        return req

    def show() -> dict[str, int]:
        cells, counts = [], {"owned": 0, "cached": 0, "free": 0}
        for b in kv.block_pool.blocks:
            state = f"ref{b.ref_cnt}" if b.ref_cnt else ("cached" if b.block_hash else "free")
            counts["owned" if b.ref_cnt else state] += 1
            cells.append(f"{b.block_id}:{state}")
        order = [b.block_id for b in kv.block_pool.free_block_queue.get_all_free_blocks()]
        print(f"      pool {' '.join(cells)}   free queue (evict from the left) {order}")
        return counts

    found: dict[str, Any] = {}
    a = admit("A", list(range(100, 110)))  # 2 full blocks + 2 tokens
    show()
    kv.free(a)
    print("   A finishes: its 2 full blocks keep their hashes (cached), the partial one is free")
    found["after_A"] = show()
    b = admit("B", list(range(100, 108)) + [7, 7, 7, 7, 7])  # same first 8 tokens
    show()
    found["C_refused"] = admit("C", list(range(200, 214))) is None  # 4 blocks, 2 are free
    show()
    kv.free(b)
    print("   B finishes: blocks are freed tail first, so the shared prefix is evicted last")
    found["after_B"] = show()
    cached_before = {b.block_id for b in kv.block_pool.blocks if b.block_hash and not b.ref_cnt}
    admit("C", list(range(200, 214)))
    found["evicted"] = sorted(cached_before & set(kv.get_block_ids("C")))
    print(f"   C popped the queue's head; cached blocks {found['evicted']} were evicted", end="")
    print(" (hashes dropped)")
    found["after_C"] = show()
    return found


def waste(model_dir: Path) -> dict[str, tuple[float, int]]:
    """Section 4; returns allocation -> (percent of held slots wasted on average, peak slots)."""
    section("4. Waste on 64 mixed requests (prompts 32-512, outputs 32-256 tokens)")
    rng = random.Random(0)  # benchmarks/common.py's recipe, with the tiny model's vocabulary
    prompts = [[rng.randint(3, 383) for _ in range(rng.randint(32, 512))] for _ in range(64)]
    out_lens = [rng.randint(32, 256) for _ in range(64)]
    llm = LLM(str(model_dir), max_num_seqs=64, kv_cache_memory_bytes=1 << 26)
    engine = llm.llm_engine
    for i, (p, n) in enumerate(zip(prompts, out_lens)):
        params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        engine.add_request(f"r{i}", {"prompt_token_ids": p}, params)
    sched = engine.engine_core.scheduler
    kv, max_len = sched.kv_cache_manager, sched.max_model_len
    sums = {"paged": 0.0, "contiguous, prompt + max_tokens": 0.0, "contiguous, max_model_len": 0.0}
    steps, peak = 0, {k: 0 for k in sums}
    while engine.has_unfinished_requests():
        engine.step()
        stored = sum(r.num_computed_tokens for r in sched.running)  # slots holding real K/V
        held = {
            "paged": sum(len(b) for b in kv.req_to_blocks.values()) * kv.block_size,
            "contiguous, prompt + max_tokens": sum(
                r.num_prompt_tokens + r.max_tokens for r in sched.running
            ),
            "contiguous, max_model_len": max_len * len(sched.running),
        }
        if held["paged"]:
            steps += 1
            for k, slots in held.items():
                sums[k] += (slots - stored) / slots
                peak[k] = max(peak[k], slots)
    print(f"   averaged over {steps} steps, slots held but not (yet) holding K/V:")
    for k in sums:
        print(f"   {k:32s} {100 * sums[k] / steps:5.1f}% wasted, peak {peak[k]:>7,} slots")
    print(f"   (max_model_len = {max_len}; benchmarks/throughput.py on SmolLM2: 2.1% vs 18.2%)")
    return {k: (100 * sums[k] / steps, peak[k]) for k in sums}


def kernels() -> dict[str, float]:
    """Section 5; returns backend -> max |out - ref| for the backends this machine has."""
    section("5. One decode batch, every kernel on this machine vs the naive reference")
    q_lens, ctx = [1] * 16, [random.Random(i).randint(100, 1000) for i in range(16)]
    query, kc, vc, bt, sl, qsl, k_all, v_all = _case(16, 64, 3, 3, torch.float32, q_lens, ctx)
    ref = torch.cat(
        [naive_attention(query[i : i + 1], k_all[i], v_all[i], 0.125) for i in range(16)]
    )
    errors = {}
    for name in ("torch", "cpu", "triton", "cuda"):
        if not is_paged_attention_available(name) or (
            name == "triton" and not torch.cuda.is_available()
        ):
            print(f"   {name:6s} not available here")
            continue
        ops = get_paged_attention_ops(name)
        args = (query, kc, vc, bt, sl, qsl, 1, int(sl.max()), 0.125)
        out = ops.paged_attention(*args)
        start = time.perf_counter()
        for _ in range(10):
            ops.paged_attention(*args)
        ms = (time.perf_counter() - start) * 100
        errors[name] = (out - ref).abs().max().item()
        print(
            f"   {name:6s} max |out - ref| = {(out - ref).abs().max():.1e}   {ms:6.2f} ms per call"
        )
    return errors


def main(sections: tuple[int, ...] = (1, 2, 3, 4, 5)) -> dict[int, Any]:
    """Run the chosen sections; return what each found (lessons/04's test checks them)."""
    found: dict[int, Any] = {}
    if 1 in sections:
        found[1] = sizing()
    with tempfile.TemporaryDirectory() as d:
        if 2 in sections:
            found[2] = one_step(make_tiny_checkpoint(Path(d) / "small", "llama"))
        if 3 in sections:
            found[3] = lifecycle()
        if 4 in sections:
            # max_position_embeddings like SmolLM2's 8192, so "reserve max_model_len" is realistic.
            long = make_tiny_checkpoint(Path(d) / "long", "llama", max_position_embeddings=8192)
            found[4] = waste(long)
    if 5 in sections:
        found[5] = kernels()
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", type=int, nargs="*", default=[1, 2, 3, 4, 5])
    main(tuple(parser.parse_args().sections))
