"""Token bitmasks: packing, the torch reference against xgrammar's kernel, both backends agreeing.

The reference (`apply_token_bitmask_reference`) is the oracle for the C++ kernel the runner uses;
xgrammar and guidance must allow exactly the same tokens for the same regex on SmolLM2's real
vocabulary, step after step.
"""

from __future__ import annotations

import pytest
import torch

from vllm_mini.core.sched.output import GrammarOutput
from vllm_mini.sampling_params import StructuredOutputsParams
from vllm_mini.structured_output.backend_types import StructuredOutputOptions
from vllm_mini.structured_output.utils import (
    apply_grammar_bitmask,
    apply_token_bitmask_reference,
    choice_as_grammar,
    get_structured_output_key,
    unpack_bitmask,
)


def test_unpack_reads_bit_t_mod_32_of_word_t_div_32():
    bitmask = torch.zeros(1, 3, dtype=torch.int32)
    for t in (0, 31, 32, 70):
        bitmask[0, t // 32] |= torch.tensor(1 << (t % 32), dtype=torch.int64).to(torch.int32)
    allowed = unpack_bitmask(bitmask, 80)
    assert allowed.shape == (1, 80)
    assert allowed[0].nonzero().flatten().tolist() == [0, 31, 32, 70]


def test_kernel_equals_reference_on_random_masks():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1000, generator=gen)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, 32), generator=gen, dtype=torch.int64)
    bitmask = bitmask.to(torch.int32)
    output = GrammarOutput(["a", "b"], [2, 1], bitmask.numpy())
    rows = {"a": (1, 2), "b": (4, 1), "unconstrained": (0, 1)}
    fast, ref = logits.clone(), logits.clone()
    apply_grammar_bitmask(fast, rows, output, use_kernel=True)
    apply_grammar_bitmask(ref, rows, output, use_kernel=False)
    assert torch.equal(fast, ref)
    expected = logits.clone()
    sub = expected[[1, 2, 4]]
    apply_token_bitmask_reference(sub, bitmask)
    expected[[1, 2, 4]] = sub
    assert torch.equal(fast, expected)
    assert torch.equal(fast[[0, 3, 5]], logits[[0, 3, 5]])  # rows without a mask untouched


def test_keys_separate_kinds_and_whitespace_and_keep_property_order():
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "string"}}}
    key = get_structured_output_key(StructuredOutputsParams(json=schema))
    assert key[0] is StructuredOutputOptions.JSON and key[1].index('"b"') < key[1].index('"a"')
    assert key != get_structured_output_key(StructuredOutputsParams(json=schema), True)
    assert get_structured_output_key(StructuredOutputsParams(regex="a")) != (
        get_structured_output_key(StructuredOutputsParams(grammar="a"))
    )
    assert choice_as_grammar(['say "hi"', "no"]) == 'root ::= "say \\"hi\\"" | "no"'


@pytest.fixture(scope="module")
def backends(smollm2_gguf):
    from vllm_mini.structured_output.backend_guidance import GuidanceBackend
    from vllm_mini.structured_output.backend_xgrammar import XgrammarBackend
    from vllm_mini.transformers_utils.config import resolve_model_source
    from vllm_mini.transformers_utils.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(resolve_model_source(str(smollm2_gguf)))
    args = (tokenizer, 49152, tokenizer.eos_token_id)
    return tokenizer, XgrammarBackend(*args), GuidanceBackend(*args)


@pytest.mark.parametrize(
    "params, text",
    [
        # [0-9], not \d: guidance reads \d as any Unicode digit, xgrammar as ASCII.
        (StructuredOutputsParams(regex=r"[0-9]{3}-[a-z]{2,4}"), "123-abc"),
        (StructuredOutputsParams(choice=["yes", "no", "maybe so"]), "maybe so"),
    ],
)
def test_xgrammar_and_guidance_agree_on_allowed_tokens(backends, params, text):
    """Same language, same tokens, with one documented difference: where the grammar forces the
    next characters (after "maybe" only " so" can follow), llguidance allows just the canonical
    tokenization of them, xgrammar every token that spells a prefix (" ", " s", " so")."""
    tokenizer, xgr_backend, ll_backend = backends
    key = get_structured_output_key(params)
    grammars = [b.new_grammar(b.compile(key)) for b in (xgr_backend, ll_backend)]
    masks = [b.allocate_token_bitmask(1) for b in (xgr_backend, ll_backend)]
    tokens = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    for token in tokens:
        for grammar, mask in zip(grammars, masks):
            grammar.fill_bitmask(mask, 0)
        allowed = [set(unpack_bitmask(m, 49152)[0].nonzero().flatten().tolist()) for m in masks]
        assert allowed[1] <= allowed[0]
        assert token in allowed[1]
        assert len(allowed[0]) < 49152 / 10  # a real constraint, not everything
        for grammar in grammars:
            assert grammar.accept_tokens("r", [token])
    assert all(g.is_terminated() for g in grammars)


def test_validate_tokens_stops_at_the_first_forbidden_token_and_rollback_undoes(backends):
    tokenizer, xgr_backend, ll_backend = backends
    key = get_structured_output_key(StructuredOutputsParams(regex="[0-9]+"))
    good = tokenizer.encode("123", add_special_tokens=False)
    bad = tokenizer.encode("x", add_special_tokens=False)
    for backend in (xgr_backend, ll_backend):
        grammar = backend.new_grammar(backend.compile(key))
        assert grammar.validate_tokens(good + bad + good) == good
        assert grammar.accept_tokens("r", good)  # validate did not move the state
        grammar.rollback(len(good))
        assert grammar.accept_tokens("r", good)
