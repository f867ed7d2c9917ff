"""The persistent batch: the vectorized slot mapping against the list formula, and rows that stay
consistent while requests enter, leave and are condensed (checked against plain Python state)."""

from __future__ import annotations

import random

import numpy as np
import torch

from vllm_mini.sampling_params import SamplingParams
from vllm_mini.worker.block_table import BlockTable
from vllm_mini.worker.input_batch import CachedRequestState, InputBatch
from vllm_mini.worker.model_runner import compute_slot_mapping

VOCAB = 100


def test_vectorized_slot_mapping_matches_the_list_formula():
    rng = random.Random(0)
    for _ in range(100):
        bs = rng.choice([1, 2, 4, 16])
        table = BlockTable(max_num_reqs=6, max_num_blocks_per_req=8, block_size=bs)
        rows, expected, req_indices, positions = [], [], [], []
        for row in range(rng.randint(1, 6)):
            block_ids = rng.sample(range(200), rng.randint(1, 8))
            table.add_row(block_ids[:1], row)
            table.append_row(block_ids[1:], row)  # deltas, as the scheduler sends them
            end = rng.randint(1, len(block_ids) * bs)
            start = rng.randint(0, end - 1)
            rows.append(row)
            expected += compute_slot_mapping(block_ids, start, end, bs)
            req_indices += [row] * (end - start)
            positions += range(start, end)
        got = table.compute_slot_mapping(np.array(req_indices), np.array(positions))
        assert got.dtype == np.int64 and got.tolist() == expected


def _random_state(rng: random.Random, i: int) -> CachedRequestState:
    prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 20))]
    output = [rng.randrange(VOCAB) for _ in range(rng.randint(0, 5))]
    params = SamplingParams(
        temperature=rng.choice([0.0, 0.7, 1.0]),
        top_p=rng.choice([1.0, 0.9]),
        top_k=rng.choice([0, -1, 5]),
        min_p=rng.choice([0.0, 0.1]),
        repetition_penalty=rng.choice([1.0, 1.2]),
        seed=rng.choice([None, i]),
        logprobs=rng.choice([None, 0, 3]),
        min_tokens=rng.choice([0, 4]),
    )
    generator = torch.Generator().manual_seed(i) if params.seed is not None else None
    blocks = rng.sample(range(500), -(-(len(prompt) + len(output)) // 4))
    return CachedRequestState(f"r{i}", prompt, params, blocks, 0, output, generator)


def _check_rows(batch: InputBatch, live: dict[str, CachedRequestState]) -> None:
    assert sorted(r for r in batch.req_ids if r is not None) == sorted(live)
    for req_id, state in live.items():
        row = batch.req_id_to_index[req_id]
        assert batch.req_ids[row] == req_id
        tokens = state.prompt_token_ids + state.output_token_ids
        assert batch.token_ids[row, : len(tokens)].tolist() == tokens
        assert int(batch.num_tokens[row]) == len(tokens)
        assert int(batch.num_prompt_tokens[row]) == len(state.prompt_token_ids)
        table = batch.block_table.block_table[row].tolist()
        assert table == state.block_ids + [0] * (len(table) - len(state.block_ids))
        assert batch.output_token_ids[row] is state.output_token_ids


def test_rows_stay_consistent_through_adds_removes_and_condense():
    rng = random.Random(1)
    batch = InputBatch(8, 64, 4, VOCAB, torch.device("cpu"))
    live: dict[str, CachedRequestState] = {}
    for i in range(300):
        if live and (len(live) == 8 or rng.random() < 0.45):
            req_id = rng.choice(sorted(live))
            batch.remove_request(req_id)
            del live[req_id]
        else:
            live[f"r{i}"] = state = _random_state(rng, i)
            batch.add_request(state)
        if rng.random() < 0.5:
            batch.condense()
            assert None not in batch.req_ids and len(batch.req_ids) == len(live)
        _check_rows(batch, live)


def test_sampling_metadata_equals_the_one_built_from_params():
    """The batch's metadata, for all rows or a subset, equals SamplingMetadata.from_params."""
    rng = random.Random(2)
    batch = InputBatch(16, 64, 4, VOCAB, torch.device("cpu"))
    states = [_random_state(rng, i) for i in range(12)]
    for state in states:
        batch.add_request(state)
    for req_id in ("r3", "r7"):
        batch.remove_request(req_id)
    batch.condense()
    rows_by_id = {state.req_id: batch.req_id_to_index.get(state.req_id) for state in states}
    for rows in (None, [0, 2, 5], [9, 1]):
        got = batch.sampling_metadata(rows)
        rows = list(range(batch.num_reqs)) if rows is None else rows
        chosen = [next(s for s in states if rows_by_id[s.req_id] == row) for row in rows]
        want = _from_params(chosen)
        _assert_same_metadata(got, want)
    # Reused while the batch does not change; rebuilt when it does.
    assert batch.sampling_metadata() is batch.sampling_metadata()
    before = batch.sampling_metadata()
    batch.remove_request(batch.req_ids[0])
    batch.condense()
    assert batch.sampling_metadata() is not before


def _from_params(states):
    from vllm_mini.model_executor.sampling_metadata import SamplingMetadata

    return SamplingMetadata.from_params(
        params=[s.sampling_params for s in states],
        prompt_token_ids=[s.prompt_token_ids for s in states],
        output_token_ids=[s.output_token_ids for s in states],
        generators={j: s.generator for j, s in enumerate(states) if s.generator},
        vocab_size=VOCAB,
        device=torch.device("cpu"),
    )


def _assert_same_metadata(got, want) -> None:
    for name, value in vars(want).items():
        other = getattr(got, name)
        if isinstance(value, torch.Tensor):
            assert other is not None and torch.equal(other, value), name
        elif name == "generators":
            assert other.keys() == value.keys()
            assert all(other[k] is value[k] for k in value), name
        else:
            assert other == value, name
