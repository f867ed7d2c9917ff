"""The visualizer marks image placeholder tokens (stage 10) in the block grid and block tables.

A trace recorded from the real engine on the tiny random LLaVA (16 image tokens per picture):
every request carries its image span, the blocks that hold placeholder slots are marked with
exactly that many slots, in the grid and in the tables, and the trace survives its JSON round
trip (the images themselves are not stored; the prompts say how many there were).
"""

from __future__ import annotations

import re

from app.block_grid import block_grid_html, block_tables_html, image_slots, legend_html
from app.record import RunSettings, build_llm, record_trace
from tests.multimodal.conftest import tiny_llava_dir  # noqa: F401
from tests.multimodal.llava_checkpoint import TOKENS_PER_IMAGE, random_image
from vllm_mini.engine.trace import Trace


def test_image_slots_counts_the_overlap_of_spans_and_a_block():
    assert image_slots([[3, 16]], 0, 8) == 5  # positions 3..7
    assert image_slots([[3, 16]], 1, 8) == 8
    assert image_slots([[3, 16]], 2, 8) == 3  # positions 16..18
    assert image_slots([[3, 16]], 3, 8) == 0
    assert image_slots([[0, 2], [6, 4]], 0, 8) == 4


def test_trace_marks_the_blocks_that_hold_image_placeholders(tiny_llava_dir):  # noqa: F811
    settings = RunSettings(
        model=str(tiny_llava_dir), block_size=8, num_blocks=32, max_num_batched_tokens=16
    )
    llm = build_llm(settings.model, settings.engine_kwargs())
    image = random_image(3)
    prompts = [
        {"prompt": "w5 w6 w7 <image> w8", "multi_modal_data": {"image": image}},
        "w9 w10 w11",
    ]
    trace = Trace.from_json(record_trace(llm, prompts, settings).to_json())
    assert trace.settings["prompts"] == ["w5 w6 w7 <image> w8 [+1 image(s)]", "w9 w10 w11"]
    # The first step where r0 holds all three blocks its 20 prompt tokens need.
    mid, r0 = next(
        (s, r)
        for s in trace.steps
        for r in s.requests
        if r.request_id == "r0" and len(r.block_ids) == 3
    )
    assert r0.image_spans == [[3, TOKENS_PER_IMAGE]]
    # Positions 3..18 over blocks of 8: 5 slots in block 0, 8 in block 1, 3 in block 2.
    rows = block_tables_html(mid, 8, {}).split('class="kv-table-row"')
    (row,) = [r for r in rows if 'data-request-id="r0"' in r]
    assert re.findall(r'data-image-slots="(\d+)"', row) == ["5", "8", "3"]
    (text_row,) = [r for r in rows if 'data-request-id="r1"' in r]
    assert "data-image-slots" not in text_row
    grid = block_grid_html(mid, {}, 8)
    marked = dict(re.findall(r'data-block-id="(\d+)"[^>]*?data-image-slots="(\d+)"', grid))
    assert {int(b): int(n) for b, n in marked.items()} == dict(zip(r0.block_ids, [5, 8, 3]))
    assert "image placeholder" in legend_html(True) and "image" not in legend_html()
