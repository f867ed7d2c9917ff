"""The KV-cache visualizer: watch paged KV blocks and the scheduler, one engine step at a time.

Stages 4-5 teaching tool (`make app`). Mirrors no single vLLM file; it draws what
vllm/v1/core/block_pool.py, kv_cache_manager.py and sched/scheduler.py do, from the step trace of
vllm_mini/engine/trace.py. Run mode runs the real engine on a workload and records the trace;
replay mode loads a saved one. Read lessons/04_paged_kv_cache, lessons/04b_prefix_caching and lessons/05_continuous_batching
next to it (and lessons/11_speculative_decoding for a run with drafts). Next: controls.py
(sidebar), then block_grid.py and step_views.py (the views).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# `streamlit run app/streamlit_app.py` puts app/ on sys.path, not the repo root above it.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.block_grid import (  # noqa: E402
    CSS,
    block_grid_html,
    block_tables_html,
    legend_html,
    request_colors,
    tables_legend_html,
)
from app.controls import sidebar  # noqa: E402
from app.step_views import (  # noqa: E402
    line_chart,
    scheduled_rows,
    spec_notes,
    texts_until,
    timeline_frame,
    tokens_chart,
)
from vllm_mini.engine.trace import Trace  # noqa: E402

CHART_HEIGHT = 260
SPEEDS = {"1 step/s": 1.0, "2 steps/s": 0.5, "5 steps/s": 0.2, "10 steps/s": 0.1}


def has_drafts(trace: Trace) -> bool:
    """Recorded with speculative decoding on (stage 11)."""
    return trace.speculative_config is not None or any(s.spec_decode_tokens for s in trace.steps)


def step_controls(trace: Trace) -> int:
    """The step slider and the play button; every view below follows the slider."""
    last = len(trace.steps) - 1
    state = st.session_state
    state["step"] = min(int(state.get("step", 0)), last)
    # A play tick from the previous run advances the slider before it is drawn.
    if state.pop("advance", False) and state.get("playing"):
        state["step"] = min(state["step"] + 1, last)
    col_play, col_speed, col_slider = st.columns([1, 1, 6])
    with col_play:
        label = "⏸ Pause" if state.get("playing") else "▶ Play"
        if st.button(label, key="play", width="stretch"):
            state["playing"] = not state.get("playing")
            if state["playing"] and state["step"] >= last:
                state["step"] = 0
            st.rerun()
    with col_speed:
        state.setdefault("speed", "2 steps/s")
        st.selectbox("speed", list(SPEEDS), key="speed", label_visibility="collapsed")
    with col_slider:
        st.slider("engine step", 0, max(last, 1), key="step", disabled=last == 0)
    return min(int(state["step"]), last)


def scheduler_view(trace: Trace, index: int) -> None:
    step = trace.steps[index]
    st.subheader(f"Step {index}: what the scheduler decided")
    budget = trace.settings.get("max_num_batched_tokens")
    cols = st.columns(5)
    tokens = sum(step.scheduled.values())
    cols[0].metric("tokens scheduled", f"{tokens}" + (f" / {budget}" if budget else ""))
    cols[1].metric("running", step.num_running)
    cols[2].metric("waiting", step.num_waiting)
    cols[3].metric("KV usage", f"{step.kv_usage:.0%}")
    cols[4].metric("preemptions so far", step.num_preemptions)
    rows = scheduled_rows(trace, index)
    st.dataframe(pd.DataFrame([r.__dict__ for r in rows]), hide_index=True)
    notes = []
    if step.new_request_ids:
        notes.append(f"admitted from the waiting queue: {', '.join(step.new_request_ids)}")
    if step.preempted_ids:
        notes.append(
            f"**preempted** (blocks freed, back to waiting, recomputed later): "
            f"{', '.join(step.preempted_ids)}"
        )
    if step.finished_ids:
        notes.append(
            f"finished (blocks freed; full ones stay cached): {', '.join(step.finished_ids)}"
        )
    notes += spec_notes(trace, index)
    for note in notes:
        st.markdown(f"- {note}")
    if has_drafts(trace):
        st.caption(
            "Speculative decoding (lessons/11_speculative_decoding): a proposer guesses k next "
            "tokens (n-gram: what followed the last tokens' earlier occurrence), and the target "
            "verifies them all in one forward pass. The rejection sampler keeps the longest "
            "prefix it agrees with and samples one more token, so a step yields 1 to k + 1 "
            "tokens (vllm/v1/sample/rejection_sampler.py). Rejected drafts cost compute and "
            "leave stale KV behind (vllm/v1/core/sched/scheduler.py `update_from_output`)."
        )
    st.caption(
        "One token budget per step (vllm/v1/core/sched/scheduler.py `schedule()`): running "
        "requests take theirs first (1 token for a decode, a chunk for a prefill); waiting ones "
        "are admitted with what is left, up to max_num_seqs. If a running request needs a block "
        "and none is free, the last running request is preempted. prefix_cache_tokens = prompt "
        "tokens a new request did not compute because the prefix cache had them. "
        "Lesson: lessons/05_continuous_batching."
    )


def kv_views(trace: Trace, index: int, colors: dict[str, str]) -> None:
    step = trace.steps[index]
    counts = {s: sum(1 for b in step.blocks if b[0] == s) for s in ("owned", "cached", "free")}
    st.subheader("Physical KV blocks (the block pool)")
    has_images = any(r.image_spans for r in step.requests)  # stage 10
    st.html(CSS + legend_html(has_images) + block_grid_html(step, colors, trace.block_size))
    st.caption(
        f"{len(step.blocks)} blocks of {trace.block_size} token slots: {counts['owned']} owned, "
        f"{counts['cached']} cached-free, {counts['free']} free. Blocks are handed out one at a "
        "time from a free queue, like OS pages (vllm/v1/core/block_pool.py). A freed block keeps "
        "its hash until it is reused, so a later request with the same prefix can take it back "
        "(hatched = cached). Lessons: lessons/04_paged_kv_cache (paging), "
        "lessons/04b_prefix_caching (cached blocks)."
    )
    st.subheader("Block tables (logical → physical)")
    spec = has_drafts(trace)
    legend = tables_legend_html() if spec else ""
    st.html(CSS + legend + block_tables_html(step, trace.block_size, colors))
    caption = (
        "Each request sees contiguous logical blocks; its block table maps them to scattered "
        "physical blocks (vllm/v1/core/kv_cache_manager.py `get_block_ids`). The shading is how "
        "many of a block's slots hold computed KV: only the last block is partly filled, so a "
        "request wastes less than one block, the point of PagedAttention (paper section 4)."
    )
    if spec:
        caption += (
            " Hatched red: slots the target wrote for drafts it then rejected. The scheduler "
            "only lowers num_computed_tokens past them; the blocks stay with the request (no "
            "free, no copy), and the next step writes the real tokens over them. A dashed red "
            "outline marks those blocks in the pool."
        )
    st.caption(caption)


def timeline_views(trace: Trace, index: int) -> None:
    st.subheader("Over time")
    frame = timeline_frame(trace)
    charts = [
        line_chart(frame, ["kv_usage"], "KV cache usage", index, 1.0),
        line_chart(frame, ["running", "waiting"], "Requests running / waiting", index, None),
        line_chart(frame, ["prefix_hit_rate"], "Prefix-cache hit rate (cumulative)", index, 1.0),
        tokens_chart(frame, index),
    ]
    columns = st.columns(2)
    for i, chart in enumerate(charts):
        with columns[i % 2]:
            st.altair_chart(chart, width="stretch", height=CHART_HEIGHT)
    st.caption(
        "The numbers the scheduler publishes every step (SchedulerStats in "
        "vllm/v1/metrics/stats.py). Continuous batching keeps `running` near max_num_seqs while "
        "anything waits; prefill steps spend the token budget, decode steps spend 1 per request."
    )


def text_view(trace: Trace, index: int) -> None:
    st.subheader("Generated text so far")
    texts = texts_until(trace, index)
    rows = [dict(request=rid, status=status, text=text) for rid, (status, text) in texts.items()]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def _spec_label(trace: Trace) -> str:
    spec = trace.speculative_config
    if not spec:
        return ""
    return (
        f"; speculative decoding: {spec.get('method')}, {spec.get('num_speculative_tokens')} drafts"
    )


def main() -> None:
    st.set_page_config(page_title="vllm_mini KV-cache visualizer", layout="wide")
    st.title("vllm_mini KV-cache visualizer")
    st.caption(
        "Paged KV cache, prefix caching and continuous batching, one engine step at a time. "
        "Pick a workload and press *Run the engine*, or replay a saved trace."
    )
    sidebar()
    trace: Trace | None = st.session_state.get("trace")
    if trace is None or not trace.steps:
        st.info("No trace yet: choose a workload in the sidebar and press *Run the engine*.")
        return
    source = st.session_state.get("trace_source", "")
    info, download = st.columns([4, 1])
    info.markdown(
        f"**{source}** — model: {trace.model}; {len(trace.steps)} steps; {trace.num_blocks} "
        f"blocks × {trace.block_size} tokens" + _spec_label(trace)
    )
    download.download_button(
        "Download trace JSON", trace.to_json(), "vllm_mini_trace.json", "application/json"
    )
    index = step_controls(trace)
    colors = request_colors(trace)
    scheduler_view(trace, index)
    kv_views(trace, index, colors)
    timeline_views(trace, index)
    text_view(trace, index)
    if st.session_state.get("playing"):
        if index < len(trace.steps) - 1:
            time.sleep(SPEEDS[st.session_state["speed"]])
            st.session_state["advance"] = True
            st.rerun()
        st.session_state["playing"] = False
        st.rerun()


main()
