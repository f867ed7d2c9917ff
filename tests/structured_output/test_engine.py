"""Structured outputs through the whole engine, on the real SmolLM2.

Every constrained sample must parse (json + jsonschema, re.fullmatch, membership); constrained
requests must not change their unconstrained neighbours; preemption, speculative decoding and the
grammar cache must leave outputs as they would be without them; bad constraints are errors that
name the field, after which the engine keeps serving with no KV block held.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from vllm_mini import LLM
from vllm_mini.sampling_params import SamplingParams, StructuredOutputsParams

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "zip": {"type": "integer", "minimum": 0, "maximum": 99999},
            },
            "required": ["city", "zip"],
        },
    },
    "required": ["name", "age", "role", "tags", "address"],
}
REGEX = r"[0-9]{3}-[a-z]{2,4}"
CHOICES = ["yes", "no", "maybe so"]


@pytest.fixture(scope="module")
def llm(smollm2_gguf):
    # A small KV cache (32 blocks of 16 tokens) so that the mixed batch below preempts.
    return LLM(
        model=str(smollm2_gguf),
        max_model_len=512,
        kv_cache_memory_bytes=32 * 16 * 30 * 2 * 3 * 64 * 4,
        max_num_seqs=16,
    )


@pytest.fixture(scope="module")
def prompt(llm):
    tok = llm.get_tokenizer()
    return tok.apply_chat_template(
        [{"role": "user", "content": "Describe a user of our system as JSON."}],
        tokenize=False,
        add_generation_prompt=True,
    )


def _so(**kw) -> StructuredOutputsParams:
    return StructuredOutputsParams(**kw)


def _person() -> StructuredOutputsParams:
    # Compact JSON: a third of the tokens, so the tests stay quick.
    return StructuredOutputsParams(json=PERSON, disable_any_whitespace=True)


def test_every_sample_obeys_its_constraint(llm, prompt):
    params = [
        SamplingParams(temperature=0.8, seed=i, max_tokens=160, structured_outputs=_person())
        for i in range(4)
    ]
    params += [
        SamplingParams(
            n=3, temperature=1.0, seed=7, max_tokens=16, structured_outputs=_so(regex=REGEX)
        ),
        SamplingParams(
            n=3, temperature=1.0, seed=8, max_tokens=8, structured_outputs=_so(choice=CHOICES)
        ),
        SamplingParams(
            temperature=0.8,
            seed=10,
            max_tokens=20,
            structured_outputs=_so(grammar='root ::= "The answer is " [0-9]+ "."'),
        ),
    ]
    outs = llm.generate([prompt] * len(params), params, use_tqdm=False)
    for out in outs[:4]:
        assert out.outputs[0].finish_reason == "stop"
        jsonschema.validate(json.loads(out.outputs[0].text), PERSON)
    assert all(re.fullmatch(REGEX, c.text) for c in outs[4].outputs)
    assert all(c.text in CHOICES for c in outs[5].outputs)
    assert re.fullmatch(r"The answer is [0-9]+\.", outs[6].outputs[0].text)


def test_neighbours_and_preemption_change_nothing(llm, prompt):
    """Greedy free-text requests give the same text beside constrained ones, under a cache so
    small that requests are preempted; the constrained ones stay valid."""
    free = [f"Write a long story about a {animal}." for animal in ("cat", "dog", "fox", "owl")]
    greedy = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    alone = [o.outputs[0].text for o in llm.generate(free, greedy, use_tqdm=False)]
    engine = llm.llm_engine.engine_core
    before = engine.scheduler.num_preemptions
    constrained = SamplingParams(temperature=0, max_tokens=160, structured_outputs=_person())
    mixed = llm.generate(free + [prompt] * 8, [greedy] * 4 + [constrained] * 8, use_tqdm=False)
    assert engine.scheduler.num_preemptions > before, "the test needs preemption in play"
    assert [o.outputs[0].text for o in mixed[:4]] == alone
    for out in mixed[4:]:
        jsonschema.validate(json.loads(out.outputs[0].text), PERSON)
    assert engine.scheduler.kv_cache_manager.usage == 0.0


def test_compiled_grammars_are_cached(llm, prompt):
    manager = llm.llm_engine.engine_core.scheduler.structured_output_manager
    params = SamplingParams(max_tokens=4, structured_outputs=_so(regex="[a-z]{1,9} cached"))
    llm.generate([prompt], params, use_tqdm=False)
    compiles, hits = manager.stats.num_compiles, manager.stats.num_cache_hits
    llm.generate([prompt] * 3, params, use_tqdm=False)
    assert manager.stats.num_compiles == compiles
    assert manager.stats.num_cache_hits == hits + 3


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"regex": "a(b"}, "structured_outputs.regex"),
        ({"json": {"type": "nonsense"}}, "structured_outputs.json"),
        ({"grammar": 'root ::= "a" | '}, "structured_outputs.grammar"),
        ({"json": {"type": "object"}, "regex": "a"}, "exactly one of"),
        ({"choice": []}, "structured_outputs.choice"),
    ],
)
def test_bad_constraints_name_the_field_and_the_engine_keeps_serving(llm, kwargs, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        llm.generate(["hi"], SamplingParams(max_tokens=4, structured_outputs=_so(**kwargs)))
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=3))
    assert out[0].outputs[0].text
    assert llm.llm_engine.engine_core.scheduler.kv_cache_manager.usage == 0.0


def test_speculative_drafts_are_masked_and_outputs_equal_plain_decoding(smollm2_gguf, llm, prompt):
    """n-gram drafts are walked through the grammar (and cut at the first forbidden token);
    greedy constrained output equals the same request without speculation. The third request
    repeats itself by construction, so n-gram drafts are proposed and accepted whatever text
    the model's free choices in the other two happen to repeat."""
    params = [
        SamplingParams(temperature=0, max_tokens=160, structured_outputs=_person()),
        SamplingParams(temperature=0, max_tokens=16, structured_outputs=_so(regex=REGEX)),
        SamplingParams(temperature=0, max_tokens=40, structured_outputs=_so(regex=r"(na ){12}")),
    ]
    plain = [o.outputs[0].text for o in llm.generate([prompt] * 3, params, use_tqdm=False)]
    spec_llm = LLM(
        model=str(smollm2_gguf),
        max_model_len=512,
        speculative_config={"method": "ngram", "num_speculative_tokens": 3},
    )
    outs = spec_llm.generate([prompt] * 3, params, use_tqdm=False)
    assert [o.outputs[0].text for o in outs] == plain
    stats = spec_llm.llm_engine.engine_core.scheduler.spec_decoding_stats
    assert stats.num_draft_tokens > 0 and stats.num_accepted_tokens > 0


def test_guidance_backend_serves_the_same_api(smollm2_gguf, prompt):
    """guidance reads JSON schema to the letter: without `additionalProperties: false` an object
    may hold any extra key (xgrammar forbids them by default), so vLLM's option turns them off."""
    guidance_person = StructuredOutputsParams(
        json=PERSON, disable_any_whitespace=True, disable_additional_properties=True
    )
    llm = LLM(
        model=str(smollm2_gguf),
        max_model_len=512,
        structured_outputs_config={"backend": "guidance"},
    )
    params = [
        SamplingParams(temperature=0.8, seed=i, max_tokens=160, structured_outputs=guidance_person)
        for i in range(2)
    ] + [
        SamplingParams(
            n=3, temperature=1.0, seed=3, max_tokens=16, structured_outputs=_so(regex=REGEX)
        )
    ]
    outs = llm.generate([prompt] * 3, params, use_tqdm=False)
    for out in outs[:2]:
        jsonschema.validate(json.loads(out.outputs[0].text), PERSON)
    assert all(re.fullmatch(REGEX, c.text) for c in outs[2].outputs)


def test_a_slow_grammar_compiles_off_the_loop_while_others_run(llm):
    """A bounded repeat compiles for about a second (xgrammar unrolls the count); meanwhile the
    engine keeps stepping the other request, and the slow one is admitted once it is ready."""
    engine = llm.llm_engine
    scheduler = engine.engine_core.scheduler
    slow = SamplingParams(max_tokens=4, structured_outputs=_so(regex="[a-z]{1,1500}"))
    engine.add_request("slow", "Spell a word:", slow)
    engine.add_request("fast", "The capital of France is", SamplingParams(max_tokens=2))
    engine.step()
    assert scheduler.requests["slow"].status.name == "WAITING_FOR_FSM"
    assert scheduler.requests["fast"].num_output_tokens == 1  # it ran while slow compiled
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.outputs[0].text
    assert re.fullmatch("[a-z]{1,1500}", finished["slow"]) and finished["fast"]
