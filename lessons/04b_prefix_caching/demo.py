"""Lesson 04b demo: one system prompt, many questions, on SmolLM2-135M-Instruct.

1. Four requests share a system prompt: block tables point at the same physical blocks
   (ref count 4); after they finish the blocks stay cached-free.
2. A prompt seen before in full still recomputes its last token (and so its last block).
3. Four more questions, timed with enable_prefix_caching=False and True: the prompt tokens the
   model actually ran, the prefill time, and whether the first generated tokens agree.

    .venv/bin/python lessons/04b_prefix_caching/demo.py          (about 15 s; loads SmolLM2 twice)
    .venv/bin/python lessons/04b_prefix_caching/demo.py --tiny   (a tiny random model, seconds)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import make_tiny_checkpoint  # noqa: E402
from vllm_mini import LLM, SamplingParams  # noqa: E402

MakePrompt = Callable[[str], "str | dict[str, list[int]]"]

BLOCK_SIZE = 16

SYSTEM = (
    "You are the help desk of a small public library in a mountain town. You answer questions "
    "from visitors about opening hours, borrowing rules, the reading room, the children's corner "
    "and the local history archive. The library opens at nine in the morning and closes at six "
    "in the evening from Monday to Friday, and at one in the afternoon on Saturday. It is closed "
    "on Sunday and on public holidays. A visitor may borrow up to eight books at a time for three "
    "weeks, and renew each book twice, in person, by phone or online, unless another reader has "
    "reserved it. Films and music may be borrowed for one week. Late returns cost ten cents per "
    "item per day, and nobody is charged more than the price of the item. The reading room on "
    "the first floor is silent; phones must be switched to silent mode there. The children's "
    "corner has story time every Wednesday at four. The history archive holds old newspapers, "
    "maps and photographs of the valley; it can be visited on Tuesday and Thursday afternoons "
    "with an appointment, and its documents never leave the building. Printing costs five cents "
    "per page. The wireless network is free; its password is at the front desk. Answer in one "
    "or two friendly sentences. If you do not know the answer, say so and suggest asking at the "
    "front desk.\n"
)
QUESTIONS = [
    "When do you open on Saturday?",
    "How many books can I borrow?",
    "Can I renew a book by phone?",
    "Is there story time for kids?",
    "How much is a late return?",
    "Can I take an old map home?",
    "Do you have free wifi?",
    "How much does printing cost?",
]


def prompt(question: str) -> str:
    return f"{SYSTEM}Visitor: {question}\nAssistant:"


def stand_in_prompt(question: str) -> dict[str, list[int]]:
    """The same prompt for the tiny random model, whose tokenizer knows only the words w3..w383:
    one stand-in token id per word (a fixed hash), so the system prompt is still one long run of
    varied tokens shared by every question, and each question's words differ."""
    return {
        "prompt_token_ids": [3 + zlib.crc32(w.encode()) % 381 for w in prompt(question).split()]
    }


def token_ids(llm: LLM, p: str | dict[str, list[int]]) -> list[int]:
    return p["prompt_token_ids"] if isinstance(p, dict) else llm.get_tokenizer().encode(p)


def sharing(llm: LLM, make_prompt: MakePrompt = prompt) -> dict[str, Any]:
    """Section 1; returns the cached tokens of each request and the pool's state."""
    print("=== 1. Four requests, one system prompt (block_size 16)")
    engine = llm.llm_engine
    sched = engine.engine_core.scheduler
    kv = sched.kv_cache_manager
    params = SamplingParams(temperature=0, max_tokens=8)
    engine.add_request("r0", make_prompt(QUESTIONS[0]), params)
    engine.step()  # r0's prefill computes, and hashes, the system prompt's blocks
    for i in (1, 2, 3):
        engine.add_request(f"r{i}", make_prompt(QUESTIONS[i]), params)
    engine.step()  # r1..r3 find those blocks in the cache and prefill only their questions
    cached_tokens = []
    for i in range(4):
        req = sched.requests[f"r{i}"]
        cached_tokens.append(req.num_cached_tokens)
        table = kv.get_block_ids(req.request_id)
        print(
            f"   r{i}: {req.num_prompt_tokens} prompt tokens, {req.num_cached_tokens:3d} from the "
            f"cache; block table {table[:3]} ... {table[-3:]}"
        )
    shared = [b.block_id for b in kv.block_pool.blocks if b.ref_cnt == 4]
    print(f"   blocks with ref count 4 (the system prompt's full blocks): {len(shared)}")
    while engine.has_unfinished_requests():
        engine.step()
    blocks = kv.block_pool.blocks
    cached = sum(1 for b in blocks if b.ref_cnt == 0 and b.block_hash is not None)
    print(f"   all finished: {cached} cached-free blocks, {kv.num_free_blocks} free in total")
    stats = kv.prefix_cache_stats
    print(f"   hit rate {stats.hits}/{stats.queries} tokens = {100 * stats.hit_rate:.0f}%")
    return {
        "cached_tokens": cached_tokens,
        "shared_blocks": len(shared),
        "cached_free": cached,
        "hits": stats.hits,
    }


def repeat(llm: LLM, make_prompt: MakePrompt = prompt) -> list[tuple[int, int]]:
    """Section 2; returns (prompt tokens, tokens from the cache) for the two prompts."""
    print("\n=== 2. Prompts seen before in full: the last token always runs")
    tokens = token_ids(llm, make_prompt(QUESTIONS[0]))
    whole = (len(tokens) - 1) // BLOCK_SIZE * BLOCK_SIZE  # a prompt of only full blocks
    found = []
    for ids in (tokens, tokens[:whole]):
        out = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1), use_tqdm=False)[
            0
        ]
        n = len(ids)
        found.append((n, out.num_cached_tokens))
        print(
            f"   {n} tokens ({n // BLOCK_SIZE} full blocks + {n % BLOCK_SIZE}): "
            f"{out.num_cached_tokens} from the cache, {n - out.num_cached_tokens} run"
        )
    print(
        "   only full blocks are cached, and at most (n - 1) // block_size of them are used, so\n"
        "   a prompt made of full blocks recomputes its whole last block to get its logits"
    )
    return found


def timed(
    llm: LLM, questions: list[str], make_prompt: MakePrompt = prompt
) -> tuple[float, int, list[int]]:
    params = SamplingParams(temperature=0, max_tokens=1)  # one token: the prefill is the work
    start = time.perf_counter()
    outs = llm.generate([make_prompt(q) for q in questions], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    computed = sum(len(o.prompt_token_ids) - o.num_cached_tokens for o in outs)
    return elapsed, computed, [o.outputs[0].token_ids[0] for o in outs]


def main(num_timed: int = 4, model: str | None = None) -> dict[str, Any]:
    """Run the three sections, timing `num_timed` new questions in section 3; return what they
    found (lessons/04b's test checks it). model: a tiny random checkpoint (see --tiny) instead
    of SmolLM2, fed stand-in token ids."""
    timed_questions = QUESTIONS[4 : 4 + num_timed]
    make_prompt = prompt if model is None else stand_in_prompt
    warm = LLM(model, block_size=BLOCK_SIZE, enable_prefix_caching=True)
    found: dict[str, Any] = {
        "sharing": sharing(warm, make_prompt),
        "repeat": repeat(warm, make_prompt),
    }

    n = len(timed_questions)
    print(f"\n=== 3. {n} more questions behind the same system prompt, prefill timed")
    cold = LLM(model, block_size=BLOCK_SIZE, enable_prefix_caching=False)
    cold.generate("Hello", SamplingParams(max_tokens=1), use_tqdm=False)  # warm-up, untimed
    results = {}
    for name, llm in (("enable_prefix_caching=False", cold), ("enable_prefix_caching=True ", warm)):
        results[name] = timed(llm, timed_questions, make_prompt)
        seconds, computed, _ = results[name]
        print(f"   {name}: {computed:5d} prompt tokens run, {seconds:.2f} s")
    (t_cold, run_cold, first_cold), (t_warm, run_warm, first_warm) = results.values()
    print(f"   speed-up {t_cold / t_warm:.1f}x; same first tokens: {first_cold == first_warm}")
    found["timed"] = {"run": (run_cold, run_warm), "same_first_tokens": first_cold == first_warm}
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random model, in seconds")
    if parser.parse_args().tiny:
        with tempfile.TemporaryDirectory() as d:
            main(model=str(make_tiny_checkpoint(Path(d), "llama")))
    else:
        main()
