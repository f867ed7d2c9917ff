"""Sample workloads for the visualizer, each chosen to make one lesson visible.

Stages 4-5 teaching tool. Mirrors no vLLM file (the closest are vLLM's benchmark datasets in
vllm/benchmarks/datasets.py). A preset is a list of prompts plus engine settings that make its
effect appear: a long shared system prompt (prefix caching, lessons/04b_prefix_caching), a burst
of chats of different lengths (continuous batching, lessons/05_continuous_batching), a cache
too small for the load (preemption) and text that repeats itself (n-gram speculative decoding,
lessons/11_speculative_decoding). Next: record.py.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from app.tiny_model import FIRST_WORD_ID, TINY_VOCAB_SIZE

SYSTEM_PROMPT = (
    "You are a patient teaching assistant for a course on serving large language models. "
    "Answer in two short sentences and use plain words. When a question is about memory, "
    "explain it with the picture of a notebook whose pages can be handed out one at a time, "
    "shared between readers, and taken back when nobody needs them anymore. Never invent "
    "numbers; if you do not know something, say so. Question:"
)

_QUESTIONS = [
    "What is a KV cache?",
    "Why does paging reduce wasted memory?",
    "What happens when two requests share a prefix?",
    "Why is decoding slower per token than prefill?",
]

_CHATS = [
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "List three prime numbers.",
    "Say hello in Spanish.",
    "Explain rain to a child.",
    "Name a famous painter.",
    "What is two plus two?",
    "Describe a cat in five words.",
]

_STORIES = [
    "Tell a long story about a lighthouse keeper who finds a message in a bottle, describing the "
    "storm, the old lamp, the gulls and the stranger who arrives at dawn with a question.",
    "Tell a long story about a baker in a mountain village who bakes one loaf for every person, "
    "describing the flour, the oven, the snow and the child who never comes to collect hers.",
    "Tell a long story about a robot that learns to garden, describing the seeds, the broken "
    "watering can, the neighbour's cat and the first tomato that ripens in late summer.",
    "Tell a long story about two rival chess players on a night train, describing the board, "
    "the rattling carriage, the tea that goes cold and the move that neither of them expects.",
]

# Text that repeats itself: the n-gram proposer finds the last few tokens earlier in the request
# and drafts what followed them there (copying, renaming, quoting: vLLM's "prompt lookup").
_REPEATS = [
    "the cat sat on the mat the cat sat on the mat the cat sat on the mat",
    "Say hello in Spanish, then say hello in Spanish again.",
    "Rename x to total: x = 0; for item in items: x = x + item; print(x); return x",
    "Continue the pattern: red green blue red green blue red green blue red",
]

MODEL_KINDS = ("tiny", "smollm2")


@dataclass(frozen=True)
class Workload:
    title: str
    lesson: str
    description: str
    prompts: list[str]
    # Engine/run settings that make the effect visible, per model kind (tiny or smollm2).
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)


WORKLOADS: dict[str, Workload] = {
    "prefix": Workload(
        title="Shared system prompt (prefix caching)",
        lesson="lessons/04b_prefix_caching",
        description=(
            "Four questions behind the same long system prompt. The first request computes the "
            "system prompt's blocks; later ones find them in the prefix cache and point their "
            "block tables at the same physical blocks (ref count > 1)."
        ),
        prompts=[f"{SYSTEM_PROMPT} {q}" for q in _QUESTIONS],
        settings={
            "tiny": dict(
                block_size=8,
                num_blocks=48,
                max_num_seqs=4,
                max_num_batched_tokens=64,
                max_tokens=12,
                arrival_interval=2,
            ),
            "smollm2": dict(
                block_size=16,
                num_blocks=40,
                max_num_seqs=4,
                max_num_batched_tokens=128,
                max_tokens=16,
                arrival_interval=2,
            ),
        },
    ),
    "batching": Workload(
        title="Chat burst (continuous batching)",
        lesson="lessons/05_continuous_batching",
        description=(
            "Eight short chats with different output lengths and at most four running at once. "
            "Whenever one finishes, a waiting request joins the batch at the very next step: the "
            "batch never drains, unlike static batching."
        ),
        prompts=list(_CHATS),
        settings={
            "tiny": dict(
                block_size=4,
                num_blocks=48,
                max_num_seqs=4,
                max_num_batched_tokens=32,
                max_tokens=16,
                vary_lengths=True,
                arrival_interval=0,
            ),
            "smollm2": dict(
                block_size=8,
                num_blocks=48,
                max_num_seqs=4,
                max_num_batched_tokens=64,
                max_tokens=20,
                vary_lengths=True,
                arrival_interval=0,
            ),
        },
    ),
    "preemption": Workload(
        title="Tight KV cache (preemption)",
        lesson="lessons/05_continuous_batching",
        description=(
            "Four long prompts with long answers in a cache that holds about two of them. All "
            "are admitted while their prompts fit; as decodes grow, the newest request is "
            "preempted (its blocks freed) and later recomputed from scratch."
        ),
        prompts=list(_STORIES),
        settings={
            "tiny": dict(
                block_size=4,
                num_blocks=40,
                max_num_seqs=4,
                max_num_batched_tokens=64,
                max_tokens=40,
                arrival_interval=0,
                enable_prefix_caching=False,
            ),
            "smollm2": dict(
                block_size=8,
                num_blocks=28,
                max_num_seqs=4,
                max_num_batched_tokens=96,
                max_tokens=40,
                arrival_interval=0,
                enable_prefix_caching=False,
            ),
        },
    ),
    "spec": Workload(
        title="Repetitive text (speculative decoding, n-gram)",
        lesson="lessons/11_speculative_decoding",
        description=(
            "Four prompts that repeat themselves, with n-gram speculative decoding on (3 drafts). "
            "A decoding request whose last tokens occurred earlier schedules 1 + k tokens: its "
            "last token and k drafts copied from what followed. One forward pass verifies them; "
            "rejected drafts have their KV written but num_computed_tokens rolled back past it "
            "(hatched red in the block tables). The tiny random model rarely repeats its prompt, "
            "so most of its drafts are rejected; SmolLM2 copies, and accepts many."
        ),
        prompts=list(_REPEATS),
        settings={
            "tiny": dict(
                block_size=4,
                num_blocks=64,
                max_num_seqs=4,
                max_num_batched_tokens=64,
                max_tokens=24,
                arrival_interval=0,
                num_speculative_tokens=3,
            ),
            "smollm2": dict(
                block_size=8,
                num_blocks=64,
                max_num_seqs=4,
                max_num_batched_tokens=128,
                max_tokens=32,
                arrival_interval=0,
                num_speculative_tokens=3,
            ),
        },
    ),
}


def to_tiny_vocab(text: str) -> str:
    """Map each word to a fixed word of the tiny model's vocabulary ("w3".."w383").

    The map is deterministic (crc32), so prompts that share a prefix of words still share a
    prefix of tokens: the prefix-caching preset works on the tiny model too. Words that already
    are vocabulary words ("w17") are kept, so you can type token-level prompts directly.
    """
    span = TINY_VOCAB_SIZE - FIRST_WORD_ID
    words = []
    for word in text.split():
        if (
            word[:1] == "w"
            and word[1:].isdigit()
            and FIRST_WORD_ID <= int(word[1:]) < TINY_VOCAB_SIZE
        ):
            words.append(word)
        else:
            words.append(f"w{FIRST_WORD_ID + zlib.crc32(word.lower().encode()) % span}")
    return " ".join(words)


def parse_prompts(text: str) -> list[str]:
    """One prompt per non-empty line."""
    return [line.strip() for line in text.splitlines() if line.strip()]
