"""Speculative decoding: decode speed with and without n-gram drafts, in the same run.

Stage 11 benchmark. Two workloads of chat prompts for the default model (SmolLM2-135M-Instruct):
- copy-heavy: edit, repeat or reformat a given code snippet or text; the answer quotes its
  input, so prompt lookup finds the next tokens in the prompt;
- open-ended: questions whose answers share little with the prompt.
For each workload, greedy decoding at batch 1 (one request at a time) and at batch 8 (all at
once): output tokens per second without speculation and with the n-gram proposer, their ratio,
the acceptance rate and the mean acceptance length (tokens per verifying step). The outputs are
checked to be identical (greedy speculation must change nothing).

`--scan` adds the measurement behind the whole idea: the time of one forward pass as a function
of the number of query tokens it carries (1 = a decode step, 1 + k = verifying k drafts).

    python benchmarks/spec_decode.py [--dtype auto|float32] [--k 4] [--scan]
    python benchmarks/spec_decode.py --method draft_model --draft-layers 16   # self-speculation
"""

from __future__ import annotations

import argparse
import time

import torch

from vllm_mini import LLM, SamplingParams
from vllm_mini.attention.backends.abstract import AttentionMetadata
from vllm_mini.forward_context import set_forward_context

CODE = """def mean(values):
    total = 0
    for v in values:
        total += v
    return total / len(values)


def variance(values):
    m = mean(values)
    return sum((v - m) ** 2 for v in values) / len(values)
"""
TEXT = (
    "The library opens at nine in the morning and closes at six in the evening. Members may "
    "borrow up to five books at a time for three weeks. Late returns cost ten cents a day. "
    "The reading room on the second floor is quiet and has free wireless internet."
)
JSON = '{"name": "Ada", "age": 36, "city": "London", "languages": ["English", "French"]}'
COPY_HEAVY = [
    f"Add a docstring to each function in this Python code and return the whole code:\n\n{CODE}",
    f"Rename the function `mean` to `average` everywhere in this code:\n\n{CODE}",
    f"Repeat the following text exactly, word for word:\n\n{TEXT}",
    f"Correct any mistakes in this text and write it out again:\n\n{TEXT}",
    f"Rewrite this JSON with one key per line:\n\n{JSON}",
    f"Copy this code and add type hints to it:\n\n{CODE}",
    f"Write this paragraph again, in the same words, as a bulleted list of sentences:\n\n{TEXT}",
    f"Return this JSON unchanged, then explain each field:\n\n{JSON}",
]
OPEN_ENDED = [
    "Write a short poem about autumn leaves.",
    "Why is the sky blue? Explain it to a child.",
    "Give me three ideas for a rainy weekend.",
    "What are the benefits of learning a second language?",
    "Describe your ideal breakfast.",
    "How do bees make honey?",
    "Tell me a story about a robot who learns to paint.",
    "What should I pack for a trip to the mountains?",
]


def run(llm: LLM, prompts: list[str], max_tokens: int, batch: int) -> tuple[float, float, list]:
    """(decode tok/s, end-to-end tok/s, token ids) for the prompts, `batch` at a time.

    Decode speed leaves the prompt out: a group's tokens after each request's first one, over
    the time from the group's first first-token to its last token (prefill is what speculation
    cannot speed up, and long copy-heavy prompts would otherwise dilute the figure).
    """
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    messages = [[{"role": "user", "content": p}] for p in prompts]
    llm.chat(messages[:1], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    outputs, num_tokens, decode_tokens, decode_time = [], 0, 0, 0.0
    start = time.perf_counter()
    for i in range(0, len(messages), batch):
        outs = llm.chat(messages[i : i + batch], params, use_tqdm=False)
        outputs += [o.outputs[0].token_ids for o in outs]
        num_tokens += sum(len(o.outputs[0].token_ids) for o in outs)
        decode_tokens += sum(len(o.outputs[0].token_ids) - 1 for o in outs)
        first = min(o.metrics.first_token_time for o in outs)
        decode_time += max(o.metrics.last_token_time for o in outs) - first
    total = time.perf_counter() - start
    return decode_tokens / decode_time, num_tokens / total, outputs


def forward_time_scan(llm: LLM, query_tokens: list[int], context: int = 200) -> None:
    """ms per forward pass (model + LM head on every query token) vs query tokens per sequence.

    One sequence whose first `context` positions sit in KV blocks 0, 1, ... (their contents do
    not matter for timing) gets q new tokens: exactly the shape of a step verifying q - 1 drafts.
    """
    runner = llm.llm_engine.engine_core.worker.model_runner
    model = runner.model
    print(f"\nforward pass time vs query tokens (one sequence, {context} tokens of context):")
    base = None
    for q in query_tokens:
        times = []
        ids = torch.arange(q) + 2000
        positions = torch.arange(context, context + q)
        bs = runner.block_size
        num_blocks = -(-(context + q) // bs)
        meta = AttentionMetadata(
            num_actual_tokens=q,
            max_query_len=q,
            max_seq_len=context + q,
            query_start_loc=torch.tensor([0, q], dtype=torch.int32),
            seq_lens=torch.tensor([context + q], dtype=torch.int32),
            block_table=torch.arange(num_blocks, dtype=torch.int32).unsqueeze(0),
            slot_mapping=torch.arange(context, context + q),
            query_start_loc_cpu=[0, q],
            seq_lens_cpu=[context + q],
            req_ids=["scan"],
        )
        with torch.inference_mode(), set_forward_context(meta):
            for _ in range(3):
                model.compute_logits(model(ids, positions))
            for _ in range(10):
                start = time.perf_counter()
                model.compute_logits(model(ids, positions))
                times.append(time.perf_counter() - start)
        ms = 1000 * sorted(times)[len(times) // 2]
        base = base or ms
        print(f"  {q:>2} query tokens: {ms:6.1f} ms  ({ms / base:.2f}x one token)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--lookup-min", type=int, default=2)
    parser.add_argument("--lookup-max", type=int, default=4)
    parser.add_argument("--method", choices=["ngram", "draft_model"], default="ngram")
    parser.add_argument(
        "--disable-by-batch-size", type=int, default=None, help="no drafts from this batch size"
    )
    parser.add_argument("--draft-model", default=None, help="draft checkpoint (draft_model)")
    parser.add_argument(
        "--draft-layers", type=int, default=None, help="draft = the target's first N layers"
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--scan", action="store_true")
    args = parser.parse_args()
    if args.method == "ngram":
        spec = {"prompt_lookup_min": args.lookup_min, "prompt_lookup_max": args.lookup_max}
        label = f"ngram k={args.k}, lookup {args.lookup_min}-{args.lookup_max}"
    else:
        spec = {"model": args.draft_model, "num_draft_layers": args.draft_layers}
        label = f"draft model {args.draft_model or 'target'} k={args.k}"
        label += f", first {args.draft_layers} layers" if args.draft_layers else ""
    spec.update(method=args.method, num_speculative_tokens=args.k)
    if args.disable_by_batch_size is not None:
        spec["disable_by_batch_size"] = args.disable_by_batch_size
        label += f", disable_by_batch_size {args.disable_by_batch_size}"
    engines = {
        "plain": LLM(args.model, dtype=args.dtype, enable_prefix_caching=False),
        "spec": LLM(
            args.model, dtype=args.dtype, enable_prefix_caching=False, speculative_config=spec
        ),
    }
    print(
        f"model {args.model or 'default (SmolLM2-135M-Instruct GGUF)'}, dtype {args.dtype}, "
        f"threads {torch.get_num_threads()}, greedy, max_tokens {args.max_tokens}; {label}"
    )
    print("decode tok/s (after the first token) and, in brackets, end-to-end tok/s")
    print(
        f"{'workload':<12} {'batch':>5} {'plain':>15} {'spec':>15} {'ratio':>12} "
        f"{'accept':>7} {'mean len':>8} {'same':>5}"
    )
    for name, prompts in (("copy-heavy", COPY_HEAVY), ("open-ended", OPEN_ENDED)):
        for batch in args.batches:
            scheduler = engines["spec"].llm_engine.engine_core.scheduler
            before = (
                scheduler.spec_decoding_stats.num_drafts,
                scheduler.spec_decoding_stats.num_draft_tokens,
                scheduler.spec_decoding_stats.num_accepted_tokens,
            )
            plain, plain_e2e, plain_out = run(engines["plain"], prompts, args.max_tokens, batch)
            fast, fast_e2e, fast_out = run(engines["spec"], prompts, args.max_tokens, batch)
            stats = scheduler.spec_decoding_stats
            drafts = stats.num_drafts - before[0]
            proposed = stats.num_draft_tokens - before[1]
            accepted = stats.num_accepted_tokens - before[2]
            rate = accepted / proposed if proposed else 0.0
            mean_len = 1 + accepted / drafts if drafts else 1.0
            same = "yes" if plain_out == fast_out else "NO"
            print(
                f"{name:<12} {batch:>5} {plain:>6.1f} ({plain_e2e:>6.1f}) {fast:>6.1f} "
                f"({fast_e2e:>6.1f}) {fast / plain:>5.2f} ({fast_e2e / plain_e2e:.2f}) "
                f"{rate:>7.2f} {mean_len:>8.2f} {same:>5}",
                flush=True,
            )
    print("\n" + engines["spec"].llm_engine.engine_core.scheduler.spec_decoding_stats.summary())
    if args.scan:
        forward_time_scan(engines["plain"], [1, 2, 3, 4, 5, 6, 8])


if __name__ == "__main__":
    main()
