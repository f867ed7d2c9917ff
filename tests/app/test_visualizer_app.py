"""The Streamlit app, headless (streamlit.testing.v1.AppTest), in replay and run mode.

Peers: the saved trace itself (what the grid, tables and charts must show at each step) and a
recording made without Streamlit (app.record.record_trace) with the same settings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from app.controls import TRACE_ENV
from vllm_mini.engine.trace import Trace

APP_PATH = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
TIMEOUT = 120


def html_bodies(at: AppTest) -> str:
    return "".join(el.proto.body for el in at.get("html"))


def grid_states(at: AppTest) -> list[str]:
    grids = [el.proto.body for el in at.get("html") if 'id="kv-block-grid"' in el.proto.body]
    assert len(grids) == 1, "expected exactly one block grid"
    return re.findall(r'class="kv-block kv-(\w+)" data-block-id', grids[0])


def table_rows(at: AppTest) -> dict[str, int]:
    rows = re.findall(r'data-request-id="([^"]+)" data-num-blocks="(\d+)"', html_bodies(at))
    return {rid: int(n) for rid, n in rows}


def chart_rows(at: AppTest) -> list[int]:
    """Rows in each chart's main dataset (the red step rule is a 1-row dataset, skipped)."""
    counts = []
    for chart in at.get("vega_lite_chart"):
        sizes = [pa.ipc.open_stream(d.data.data).read_all().num_rows for d in chart.proto.datasets]
        counts.append(max(sizes))
    return counts


def assert_views_match(at: AppTest, trace: Trace, index: int) -> None:
    step = trace.steps[index]
    assert not at.exception
    assert grid_states(at) == [state for state, _, _ in step.blocks]
    assert table_rows(at) == {r.request_id: len(r.block_ids) for r in step.requests}
    schedule = at.dataframe[0].value
    assert dict(zip(schedule["request"], schedule["tokens"])) == step.scheduled
    assert at.subheader[0].value.startswith(f"Step {index}:")


@pytest.fixture
def replay(prefix_trace_path, monkeypatch) -> tuple[AppTest, Trace]:
    monkeypatch.setenv(TRACE_ENV, str(prefix_trace_path))
    at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT).run()
    return at, Trace.load(prefix_trace_path)


def test_replay_mode_draws_the_saved_trace_at_every_slider_position(replay):
    at, trace = replay
    assert at.radio(key="mode").value == "Replay a saved trace"
    assert_views_match(at, trace, 0)
    # Lines, bars: one row per step (line charts hold one row per step and series).
    n = len(trace.steps)
    assert chart_rows(at) == [n, n, 2 * n, 2 * n]
    shared = max(range(n), key=lambda i: max(b[1] for b in trace.steps[i].blocks))
    assert max(b[1] for b in trace.steps[shared].blocks) > 1
    for index in (shared, n - 1):
        at.slider(key="step").set_value(index).run()
        assert_views_match(at, trace, index)
    texts = at.dataframe[1].value
    assert set(texts["status"]) == {"FINISHED"}
    assert len(texts) == len(trace.settings["prompts"])


def test_shared_blocks_carry_their_ref_count_badge(replay):
    at, trace = replay
    index = next(i for i, s in enumerate(trace.steps) if any(b[1] > 1 for b in s.blocks))
    at.slider(key="step").set_value(index).run()
    badges = re.findall(
        r'data-block-id="(\d+)" data-state="owned" data-ref-cnt="(\d+)"', html_bodies(at)
    )
    refs = {int(b): int(r) for b, r in badges}
    expected = {i: b[1] for i, b in enumerate(trace.steps[index].blocks) if b[0] == "owned"}
    assert refs == expected
    assert html_bodies(at).count('class="kv-ref"') == sum(1 for r in expected.values() if r > 1)


def test_play_button_walks_to_the_last_step(replay):
    at, trace = replay
    at.selectbox(key="speed").set_value("10 steps/s")
    at.button(key="play").click().run()
    assert at.session_state["step"] == len(trace.steps) - 1
    assert not at.session_state["playing"]
    assert_views_match(at, trace, len(trace.steps) - 1)


def test_run_mode_records_the_same_trace_as_the_engine_without_streamlit():
    at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT).run()
    assert at.radio(key="mode").value == "Run the engine"
    assert at.session_state["workload"] == "prefix" and at.session_state["model_kind"] == "tiny"
    at.selectbox(key="workload").set_value("batching").run()
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    trace: Trace = at.session_state["trace"]
    settings = trace.settings
    assert settings["num_blocks"] == at.session_state["num_blocks"] and settings["vary_lengths"]
    assert_views_match(at, trace, 0)
    assert len(grid_states(at)) == trace.num_blocks == settings["num_blocks"]

    from app.record import RunSettings, build_llm, record_trace

    fields = {k: v for k, v in settings.items() if k != "prompts"}
    peer_settings = RunSettings(**fields)
    peer = record_trace(
        build_llm(peer_settings.model, peer_settings.engine_kwargs()),
        settings["prompts"],
        peer_settings,
    )
    assert peer.steps == trace.steps
    # Continuous batching: at most max_num_seqs run; requests join as others finish.
    assert max(s.num_running for s in trace.steps) == settings["max_num_seqs"]
    joined_late = [s.step for s in trace.steps if s.new_request_ids and s.step > 0]
    assert joined_late


def test_switching_modes_keeps_the_run_settings(replay):
    at, _ = replay
    at.radio(key="mode").set_value("Run the engine").run()
    at.number_input(key="num_blocks").set_value(20).run()
    at.radio(key="mode").set_value("Replay a saved trace").run()
    at.radio(key="mode").set_value("Run the engine").run()
    assert at.number_input(key="num_blocks").value == 20
    assert at.radio(key="mode").value == "Run the engine"


def test_a_request_too_big_for_the_cache_is_reported_and_the_next_run_works():
    at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT).run()
    at.number_input(key="num_blocks").set_value(4).run()  # 4 x 8 slots < one 75-token prompt
    at.button(key="run").click().run()
    assert "trace" not in at.session_state
    assert len(at.error) == 1 and "KV cache" in at.error[0].value
    at.number_input(key="num_blocks").set_value(48).run()
    at.button(key="run").click().run()
    assert not at.error and len(at.session_state["trace"].settings["prompts"]) == 4


def test_scheduler_rows_agree_with_the_recorded_requests(prefix_trace_path):
    from app.step_views import scheduled_rows, texts_until, timeline_frame

    trace = Trace.load(prefix_trace_path)
    frame = timeline_frame(trace)
    for index, step in enumerate(trace.steps):
        rows = scheduled_rows(trace, index)
        assert {r.request: r.tokens for r in rows} == step.scheduled
        live = {r.request_id: r for r in step.requests}
        for row in rows:
            if row.request in live:
                request = live[row.request]
                assert row.kind.split()[0] == request.kind
            else:  # finished this step; every request generates 12 tokens, so its last is a decode
                assert row.request in step.finished_ids and row.kind == "decode"
        decode = sum(r.tokens for r in rows if r.kind == "decode")
        assert frame.loc[index, "decode_tokens"] == decode
        assert frame.loc[index, "prefill_tokens"] == sum(step.scheduled.values()) - decode
    finished = {rid: s.finished_texts[rid] for s in trace.steps for rid in s.finished_ids}
    final = texts_until(trace, len(trace.steps) - 1)
    assert final == {rid: ("FINISHED", text) for rid, text in finished.items()}
    assert all(text for text in finished.values())


def rolled_back_cells(body: str) -> dict[str, int]:
    """Request id -> rolled-back slots summed over its block-table cells."""
    totals: dict[str, int] = {}
    for row in re.findall(r'<div class="kv-table-row" (.*?)(?=<div class="kv-table-row"|$)', body):
        rid = re.search(r'data-request-id="([^"]+)"', row).group(1)
        cells = re.findall(r'class="kv-cell" [^>]*data-rolled-back="(\d+)"', row)
        totals[rid] = sum(int(n) for n in cells)
    return totals


def test_speculative_trace_shows_rolled_back_slots_and_accepted_drafts(
    spec_trace_path, monkeypatch
):
    from app.block_grid import block_tables_html, request_colors

    trace = Trace.load(spec_trace_path)
    assert trace.speculative_config["method"] == "ngram"
    index = max(
        range(len(trace.steps)),
        key=lambda i: sum(r.rejected_tokens for r in trace.steps[i].requests),
    )
    step = trace.steps[index]
    verified = [r for r in step.requests if r.spec_tokens]
    assert verified and any(r.rejected_tokens for r in verified)
    # Pure HTML: each request's cells hold exactly its rejected drafts' slots, in its blocks.
    body = block_tables_html(step, trace.block_size, request_colors(trace))
    assert rolled_back_cells(body) == {r.request_id: r.rejected_tokens for r in step.requests}
    for r in verified:
        assert (
            f'data-request-id="{r.request_id}" data-num-blocks="{len(r.block_ids)}" '
            f'data-spec-tokens="{r.spec_tokens}" data-accepted="{r.accepted_tokens}" '
            f'data-rolled-back="{r.rejected_tokens}"'
        ) in body
        assert f"+1 token +{r.accepted_tokens} drafts accepted" in body
        drafts = "draft" if r.spec_tokens == 1 else "drafts"
        slots = "slot" if r.rejected_tokens == 1 else "slots"
        summary = f"{r.spec_tokens} {drafts} verified, {r.accepted_tokens} accepted, "
        assert summary + f"{r.rejected_tokens} {slots} rolled back" in body
    # The app, replaying the trace at that step: overlay, legend, notes, draft column, chart.
    monkeypatch.setenv(TRACE_ENV, str(spec_trace_path))
    at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT).run()
    at.slider(key="step").set_value(index).run()
    assert_views_match(at, trace, index)
    html = html_bodies(at)
    assert 'id="kv-tables-legend"' in html and "rolled back" in html
    # One hatched overlay per cell with rolled-back slots, plus the legend's sample.
    cells = re.findall(r'class="kv-cell" [^>]*data-rolled-back', html)
    assert cells and html.count('class="kv-rolled"') == len(cells) + 1
    rolled_pool = re.findall(r'data-ref-cnt="\d+" data-rolled-back="(\d+)"', html)
    assert sum(int(n) for n in rolled_pool) == sum(r.rejected_tokens for r in step.requests)
    schedule = at.dataframe[0].value
    drafts = dict(zip(schedule["request"], schedule["drafts"]))
    for r in verified:
        expected = f"{r.spec_tokens}: {r.accepted_tokens} accepted, {r.rejected_tokens} rolled back"
        assert drafts[r.request_id] == expected
    notes = " ".join(md.value for md in at.markdown)
    assert all(f"**{r.request_id}** verified {r.spec_tokens} draft" in notes for r in verified)
    n = len(trace.steps)
    assert chart_rows(at)[3] == 3 * n  # prefill, decode and draft tokens per step


def test_run_mode_speculative_preset_records_drafts():
    at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT).run()
    at.selectbox(key="workload").set_value("spec").run()
    assert at.number_input(key="num_speculative_tokens").value == 3
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    trace: Trace = at.session_state["trace"]
    assert trace.speculative_config["num_speculative_tokens"] == 3
    assert any(s.spec_decode_tokens for s in trace.steps)
    # Another preset turns drafts off again.
    at.selectbox(key="workload").set_value("batching").run()
    assert at.number_input(key="num_speculative_tokens").value == 0
