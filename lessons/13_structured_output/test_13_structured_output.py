"""Lesson 13: your token masks must be the ones the engine's grammar backend fills.

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`:
allowed against the engine's xgrammar grammar (XgrammarGrammar.fill_bitmask) at every prefix of
a walk over a toy vocabulary, and at several steps over SmolLM2's real 49152-token vocabulary;
pack against the engine's unpack_bitmask and bit for bit against xgrammar's own int32 words;
apply against apply_token_bitmask_reference and xgrammar's C++ kernel; drafts against the
manager's own grammar_bitmask walking a request's speculative drafts (and rolling back); tool: your
tool_choice="required" schema equals the server's (tool_parsers/utils.py), accepts a real call
and refuses malformed ones, with jsonschema and through the engine's xgrammar backend.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import jsonschema
import pytest
import torch
import xgrammar as xgr

from lessons._impl import load_impl
from vllm_mini.structured_output.backend_types import StructuredOutputOptions
from vllm_mini.structured_output.backend_xgrammar import XgrammarBackend, XgrammarGrammar
from vllm_mini.structured_output.utils import apply_token_bitmask_reference, unpack_bitmask

impl = load_impl(__file__)

# The README's toy vocabulary: several tokens span more than one character, as BPE tokens do.
VOCAB = ["0", "1", "2", "12", ".", "-", "-1", ".5", "5", "a", "ab", "1.", "<eos>"]
EOS = 12
NUMBER = r"-?\d+(\.\d+)?"
PATTERNS = [NUMBER, r"(ab|a)+-?[0-2]{1,2}", r"a|ab|12\.5"]


class ToyXgrammarBackend(XgrammarBackend):
    """The engine's xgrammar backend over a list of plain strings instead of an HF tokenizer."""

    def __init__(self, vocab: list[str], eos_token_id: int) -> None:
        self.vocab_size = len(vocab)
        info = xgr.TokenizerInfo(vocab, vocab_type=xgr.VocabType.RAW, stop_token_ids=[eos_token_id])
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)


def regex_grammar(backend: XgrammarBackend, pattern: str) -> XgrammarGrammar:
    compiled = backend.compile((StructuredOutputOptions.REGEX, pattern, False))
    return backend.new_grammar(compiled)


def engine_row(backend: XgrammarBackend, grammar: XgrammarGrammar) -> torch.Tensor:
    """The int32 mask row the engine fills for the grammar's current position."""
    bitmask = backend.allocate_token_bitmask(1)
    grammar.fill_bitmask(bitmask, 0)
    return bitmask[0]


def engine_allowed(backend: XgrammarBackend, grammar: XgrammarGrammar) -> list[int]:
    row = engine_row(backend, grammar)
    return unpack_bitmask(row[None], backend.vocab_size)[0].nonzero().flatten().tolist()


def test_allowed_tokens_hand_cases():
    # A number may start with a digit, a minus sign, or "12" and "1." (prefixes of "12.5").
    assert impl.allowed_tokens("", VOCAB, NUMBER, EOS) == [0, 1, 2, 3, 5, 6, 8, 11]
    # After "-": a digit, but not a second minus, nor "-1" (which would give "--1").
    assert impl.allowed_tokens("-", VOCAB, NUMBER, EOS) == [0, 1, 2, 3, 8, 11]
    # "1" is a complete number: stopping (EOS) is allowed, and so is a decimal point.
    assert impl.allowed_tokens("1", VOCAB, NUMBER, EOS) == [0, 1, 2, 3, 4, 7, 8, 11, EOS]
    # "1." is not a number yet: a digit must follow, so neither EOS nor a second ".".
    assert impl.allowed_tokens("1.", VOCAB, NUMBER, EOS) == [0, 1, 2, 3, 8]
    # Only EOS once nothing can extend a complete match.
    assert impl.allowed_tokens("a", VOCAB, "a", EOS) == [EOS]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_allowed_tokens_match_the_engine_on_a_toy_vocabulary(pattern):
    """Walk every token path up to 4 tokens deep that the engine's grammar allows."""
    backend = ToyXgrammarBackend(VOCAB, EOS)
    grammar = regex_grammar(backend, pattern)
    checked = 0

    def walk(text: str, depth: int) -> None:
        nonlocal checked
        engine = engine_allowed(backend, grammar)
        assert impl.allowed_tokens(text, VOCAB, pattern, EOS) == engine, f"after {text!r}"
        checked += 1
        if depth == 0:
            return
        for token in engine:
            if token != EOS:
                assert grammar.accept_tokens("r", [token])
                walk(text + VOCAB[token], depth - 1)
                grammar.rollback(1)

    walk("", 4)
    assert checked > 10  # the walk went somewhere


def test_pack_bitmask_round_trips_through_the_engines_unpack():
    gen = torch.Generator().manual_seed(0)
    for vocab_size in (1, 31, 32, 33, 64, 70, 1000):
        for density in (0.0, 0.1, 0.5, 1.0):
            keep = torch.rand(vocab_size, generator=gen) < density
            allowed = keep.nonzero().flatten().tolist()
            row = impl.pack_bitmask(allowed, vocab_size)
            assert row.dtype == torch.int32 and row.shape == ((vocab_size + 31) // 32,)
            unpacked = unpack_bitmask(row[None], vocab_size)[0]
            assert torch.equal(unpacked, keep), (vocab_size, density)
    # Bit 31 is the sign bit: token 31 alone is the most negative int32.
    assert impl.pack_bitmask([31], 32).tolist() == [-(2**31)]
    assert impl.pack_bitmask(list(range(32)), 32).tolist() == [-1]


def test_pack_bitmask_equals_xgrammars_words():
    """Past 32 tokens (a second and third word), on a vocabulary padded with tokens never allowed."""
    vocab = VOCAB[:EOS] + [f"#{i}" for i in range(60)] + ["<eos>"]
    eos = len(vocab) - 1
    backend = ToyXgrammarBackend(vocab, eos)
    grammar = regex_grammar(backend, NUMBER)
    for text_tokens in ([], [5], [3], [3, 7]):
        assert not text_tokens or grammar.accept_tokens("r", text_tokens)
        text = "".join(vocab[t] for t in text_tokens)
        mine = impl.pack_bitmask(impl.allowed_tokens(text, vocab, NUMBER, eos), len(vocab))
        assert torch.equal(mine, engine_row(backend, grammar)), f"after {text!r}"
        if text_tokens:
            grammar.rollback(len(text_tokens))


def test_apply_mask_matches_the_engine():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 77, generator=gen)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (5, 3), dtype=torch.int32, generator=gen)
    bitmask[0] = -1  # an unconstrained row (a finished grammar) keeps every logit
    original = logits.clone()
    mine = impl.apply_mask(logits, bitmask)
    assert torch.equal(logits, original), "apply_mask must not change its input"
    reference = logits.clone()
    apply_token_bitmask_reference(reference, bitmask)
    assert torch.equal(mine, reference)
    kernel = logits.clone()
    xgr.apply_token_bitmask_inplace(kernel, bitmask)  # the C++ kernel the runner uses
    assert torch.equal(mine, kernel)
    assert torch.equal(mine[0], logits[0])
    probs = torch.softmax(mine, dim=-1)
    assert torch.all(probs[~unpack_bitmask(bitmask, 77)] == 0)


@pytest.fixture(scope="module")
def toy_manager(tiny_llama_dir):
    """The engine's StructuredOutputManager with its backend over the toy vocabulary."""
    from vllm_mini.engine.arg_utils import EngineArgs
    from vllm_mini.structured_output import StructuredOutputManager

    manager = StructuredOutputManager(EngineArgs(model=str(tiny_llama_dir)).create_engine_config())
    manager.backend = ToyXgrammarBackend(VOCAB, EOS)
    return manager


def engine_draft_masks(manager, text_tokens: list[int], drafts: list[int]) -> list[list[int]]:
    """The rows grammar_bitmask fills for one request at text_tokens, verifying drafts."""
    grammar = regex_grammar(manager.backend, NUMBER)
    assert grammar.accept_tokens("r", text_tokens)
    before = engine_allowed(manager.backend, grammar)
    request = SimpleNamespace(structured_output_request=SimpleNamespace(grammar=grammar))
    out = manager.grammar_bitmask({"r": request}, ["r"], {"r": drafts})
    assert out.num_bitmask_rows == [len(drafts) + 1]
    # The walk through the drafts was rolled back: the grammar is where it started.
    assert engine_allowed(manager.backend, grammar) == before
    rows = unpack_bitmask(torch.from_numpy(out.grammar_bitmask), len(VOCAB))
    return [row.nonzero().flatten().tolist() for row in rows]


def test_masks_for_drafts_hand_case():
    everything = list(range(len(VOCAB)))
    # "1", then drafts "." and "5": rows after "1", after "1.", after "1.5".
    assert impl.masks_for_drafts("1", [4, 8], VOCAB, NUMBER, EOS) == [
        [0, 1, 2, 3, 4, 7, 8, 11, EOS],
        [0, 1, 2, 3, 8],
        [0, 1, 2, 3, 8, EOS],
    ]
    # The second draft "-" is refused after "1.": the row after it allows everything.
    rows = impl.masks_for_drafts("1", [4, 5], VOCAB, NUMBER, EOS)
    assert rows[1] == [0, 1, 2, 3, 8] and rows[2] == everything
    # No drafts: one row, the ordinary decode step.
    assert impl.masks_for_drafts("-", [], VOCAB, NUMBER, EOS) == [[0, 1, 2, 3, 8, 11]]


def test_masks_for_drafts_match_the_managers_grammar_bitmask(toy_manager):
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        # A prefix the grammar accepts (walked at random), then up to 4 random drafts.
        text_tokens: list[int] = []
        for _ in range(int(torch.randint(0, 4, (1,), generator=gen))):
            options = [t for t in impl.allowed_tokens(
                "".join(VOCAB[t] for t in text_tokens), VOCAB, NUMBER, EOS) if t != EOS]  # fmt: skip
            text_tokens.append(options[int(torch.randint(len(options), (1,), generator=gen))])
        k = int(torch.randint(0, 5, (1,), generator=gen))
        # Drafts drawn mostly from digits, so that some walks go deep before a refusal.
        pool = torch.tensor([0, 1, 2, 3, 4, 5, 8, 8, 8, 1, 2, 7, EOS])
        drafts = pool[torch.randint(len(pool), (k,), generator=gen)].tolist()
        text = "".join(VOCAB[t] for t in text_tokens)
        mine = impl.masks_for_drafts(text, drafts, VOCAB, NUMBER, EOS)
        assert mine == engine_draft_masks(toy_manager, text_tokens, drafts), (text, drafts)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now"}}


def test_required_tool_schema_accepts_calls_and_refuses_the_rest():
    schema = impl.required_tool_schema([WEATHER, TIME])
    jsonschema.Draft202012Validator.check_schema(schema)
    good = [
        [{"name": "get_weather", "parameters": {"city": "Paris"}}],
        [{"name": "get_time", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Oslo", "unit": "C"}}],
    ]  # fmt: skip
    bad = [
        [],  # tool_choice="required": at least one call
        [{"name": "get_wether", "parameters": {"city": "Paris"}}],  # no such tool
        [{"name": "get_weather"}],  # parameters missing
        [{"name": "get_weather", "parameters": {"unit": "C"}}],  # city is required
        [{"name": "get_weather", "parameters": {"city": "Paris", "unit": "K"}}],
        {"name": "get_weather", "parameters": {"city": "Paris"}},  # not a list
    ]
    for calls in good:
        jsonschema.validate(calls, schema)
    for calls in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(calls, schema)


def test_required_tool_schema_equals_the_servers():
    """The server builds the same schema for tool_choice="required" (vLLM's construction)."""
    from vllm_mini.tool_parsers.utils import get_json_schema_from_tools

    for tools in ([WEATHER], [WEATHER, TIME], [TIME]):
        assert impl.required_tool_schema(tools) == get_json_schema_from_tools("required", tools)


def test_required_tool_schema_compiles_in_the_engines_backend():
    """Feed a call character by character through the engine's xgrammar grammar."""
    chars = [chr(c) for c in range(32, 127)]
    backend = ToyXgrammarBackend(chars + ["<eos>"], len(chars))
    schema = impl.required_tool_schema([WEATHER, TIME])
    # Compact: xgrammar then allows exactly json.dumps' separators, ", " and ": ".
    key = (StructuredOutputOptions.JSON, json.dumps(schema), True)
    grammar = backend.new_grammar(backend.compile(key))
    call = json.dumps([{"name": "get_weather", "parameters": {"city": "Paris"}}])
    for i, ch in enumerate(call):
        assert grammar.accept_tokens("r", [chars.index(ch)]), f"refused {call[: i + 1]!r}"
    assert engine_allowed(backend, grammar) == [len(chars)]  # complete: only EOS remains
    wrong = backend.new_grammar(backend.compile(key))
    prefix = '[{"name": "get_wea'
    assert wrong.accept_tokens("r", [chars.index(c) for c in prefix])
    assert not wrong.accept_tokens("r", [chars.index("x")])  # no tool name continues so


@pytest.fixture(scope="module")
def smollm2_vocab():
    """SmolLM2's tokenizer, each token's text, and the engine's xgrammar backend for it."""
    from transformers import AutoTokenizer

    from vllm_mini.transformers_utils.default_model import prepare_default_model

    tokenizer = AutoTokenizer.from_pretrained(prepare_default_model())
    vocab = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    backend = XgrammarBackend(tokenizer, len(vocab), tokenizer.eos_token_id)
    return tokenizer, vocab, backend


@pytest.mark.slow
def test_allowed_and_pack_match_the_engine_on_smollm2s_vocabulary(smollm2_vocab):
    """Real BPE tokens (" the", "ing", ...): the same set and the same int32 words as xgrammar."""
    tokenizer, vocab, backend = smollm2_vocab
    pattern = r"(yes|no)|[A-Z][a-z]*( [a-z]+)*\."
    eos = tokenizer.eos_token_id
    for text in ("yes", "The cat sat."):
        grammar = regex_grammar(backend, pattern)
        prefix = ""
        for token in [*tokenizer.encode(text), None]:
            allowed = impl.allowed_tokens(prefix, vocab, pattern, eos)
            row = engine_row(backend, grammar)
            assert allowed == engine_allowed(backend, grammar), f"after {prefix!r}"
            assert torch.equal(impl.pack_bitmask(allowed, len(vocab)), row), f"after {prefix!r}"
            if token is not None:
                assert grammar.accept_tokens("r", [token])
                prefix += vocab[token]
        assert allowed == [eos]  # "yes" and "... sat." are complete: the mask leaves only EOS


@pytest.mark.demo
@pytest.mark.slow
def test_demo_outputs_satisfy_their_constraints(capsys):
    demo = load_impl(__file__, "demo")
    row = demo.main()
    out = capsys.readouterr().out
    # Each output was checked by an independent library (jsonschema, re, membership).
    assert row["valid"] == {"json": True, "regex": True, "choice": True}, out
    assert out.count("(valid: True)") == 3
    # The masks really narrow 49152 tokens down: JSON must open with "{", a date with 1 or 2.
    assert 0 < row["first_mask"]["json"] < 10 and 0 < row["first_mask"]["regex"] < 10
    assert row["fill_us"] < 1000  # a fill is microseconds, not a pass over the vocabulary
    assert row["step_ms_plain"] > 0 and row["step_ms_masked"] > 0
