"""Per-step tables and over-time charts: the scheduler's decisions, texts, and the timeline.

Stage 5 teaching tool. Mirrors the decisions of vllm/v1/core/sched/scheduler.py (`schedule()`:
who runs, how many tokens, who is preempted) and the stats it publishes (SchedulerStats: KV usage,
running/waiting counts, prefix-cache queries and hits). Stage 11 adds the drafts each request
verified and what the rejection sampler kept (vllm/v1/spec_decode/metrics.py counts the same).
Pure functions over a Trace; the Streamlit page only lays them out. Next: streamlit_app.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import pandas as pd

from vllm_mini.engine.trace import RequestTrace, StepTrace, Trace


@dataclass
class ScheduledRow:
    request: str
    kind: str  # "prefill", "prefill chunk", "decode"
    tokens: int
    prefix_cache_tokens: int  # prompt tokens found in the prefix cache (new requests only)
    kv_tokens_after: int
    outcome: str  # "", "finished", "new"
    drafts: str = ""  # speculative decoding: "3: 1 accepted, 2 rolled back"; "" without drafts


def _previous(trace: Trace, index: int) -> dict[str, RequestTrace]:
    return {r.request_id: r for r in trace.steps[index - 1].requests} if index > 0 else {}


def _finished_kind(prev: RequestTrace | None) -> str:
    """Kind of a request's last step, inferred from its snapshot one step earlier."""
    if prev is None:
        return "prefill"  # added and finished within one step
    is_decode = (
        prev.num_computed_tokens == prev.num_tokens - 1 and prev.num_tokens > prev.num_prompt_tokens
    )
    return "decode" if is_decode else "prefill"


def scheduled_rows(trace: Trace, index: int) -> list[ScheduledRow]:
    """What `Scheduler.schedule()` decided at step `index`, one row per scheduled request."""
    step = trace.steps[index]
    live = {r.request_id: r for r in step.requests}
    prev = _previous(trace, index)
    rows = []
    for rid, n in step.scheduled.items():
        request = live.get(rid)
        if request is None:  # finished during this step: its snapshot is gone
            before = prev[rid].num_computed_tokens if rid in prev else 0
            kind, after, outcome = _finished_kind(prev.get(rid)), before + n, "finished"
        else:
            # Rejected drafts were rolled back after the step: add them back to find the start.
            after = request.num_computed_tokens
            before = after + request.rejected_tokens - n
            kind = request.kind
            # Chunked prefill: the step covered only part of the tokens the request had, so
            # nothing was sampled and the rest comes in later steps.
            tokens_before = prev[rid].num_tokens if rid in prev else request.num_prompt_tokens
            if kind == "prefill" and after < tokens_before:
                kind = "prefill chunk"
            outcome = "new" if rid in step.new_request_ids else ""
        cached = before if rid in step.new_request_ids else 0
        rows.append(ScheduledRow(rid, kind, n, cached, after, outcome, _drafts(step, rid, request)))
    return rows


def _drafts(step: StepTrace, rid: str, request: RequestTrace | None) -> str:
    n = step.spec_decode_tokens.get(rid, 0)
    if request is None:  # finished this step: its snapshot (and its accepted count) is gone
        return f"{n} (finished)" if n else ""
    if not request.spec_tokens:
        return ""
    return (
        f"{request.spec_tokens}: {request.accepted_tokens} accepted, "
        f"{request.rejected_tokens} rolled back"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def spec_notes(trace: Trace, index: int) -> list[str]:
    """What speculative decoding did at step `index`, one markdown sentence per request."""
    step = trace.steps[index]
    live = {r.request_id: r for r in step.requests}
    notes = []
    for rid, n in step.spec_decode_tokens.items():
        request = live.get(rid)
        if request is None:
            notes.append(
                f"**{rid}** verified {_count(n, 'draft')} and finished within this step (a stop "
                "condition or max_tokens cuts the accepted tokens where it fires)"
            )
            continue
        accepted, rejected = request.accepted_tokens, request.rejected_tokens
        note = (
            f"**{rid}** verified {_count(n, 'draft')} in one forward pass ({n + 1} query tokens: "
            f"its last token, then the drafts): {accepted} accepted, so it gained "
            f"{_count(accepted + 1, 'token')}"
        )
        if rejected:
            first, last = request.num_computed_tokens, request.num_computed_tokens + rejected - 1
            slots = f"slot {first}" if rejected == 1 else f"slots {first}..{last}"
            note += (
                f"; {rejected} rejected: num_computed_tokens rolled back by {rejected} to "
                f"{first}, and the KV in {slots} is stale until the next step overwrites it"
            )
        notes.append(note)
    return notes


def texts_until(trace: Trace, index: int) -> dict[str, tuple[str, str]]:
    """Request id -> (status, generated text so far), as of the end of step `index`."""
    latest: dict[str, tuple[str, str]] = {}
    for step in trace.steps[: index + 1]:
        for request in step.requests:
            latest[request.request_id] = (request.status, request.text)
        for rid in step.finished_ids:
            text = step.finished_texts.get(rid) or latest.get(rid, ("", ""))[1]
            latest[rid] = ("FINISHED", text)
    return latest


def timeline_frame(trace: Trace) -> pd.DataFrame:
    """One row per step: the numbers the scheduler publishes as SchedulerStats, and the tokens."""
    rows = []
    for index, step in enumerate(trace.steps):
        # Drafts ride on decode rows (1 + k tokens); count them apart from the 1 per decode.
        drafts = sum(step.spec_decode_tokens.values())
        decode = sum(r.tokens for r in scheduled_rows(trace, index) if r.kind == "decode")
        queries = step.prefix_cache_queries
        rows.append(
            dict(
                step=step.step,
                kv_usage=step.kv_usage,
                running=step.num_running,
                waiting=step.num_waiting,
                prefix_hit_rate=step.prefix_cache_hits / queries if queries else 0.0,
                preemptions=step.num_preemptions,
                tokens=sum(step.scheduled.values()),
                decode_tokens=decode - drafts,
                draft_tokens=drafts,
                prefill_tokens=sum(step.scheduled.values()) - decode,
            )
        )
    return pd.DataFrame(rows)


def line_chart(
    frame: pd.DataFrame, columns: list[str], title: str, current_step: int, y_max: float | None
) -> alt.LayerChart:
    """Lines for `columns` over steps, with a red rule at the step the slider points at."""
    long = frame[["step", *columns]].melt(
        id_vars="step", value_vars=columns, var_name="series", value_name="value"
    )
    scale = alt.Scale(domain=[0, y_max]) if y_max is not None else alt.Scale()
    lines = (
        alt.Chart(long, title=title)
        .mark_line(point=len(frame) <= 60)
        .encode(
            x=alt.X("step:Q", title="engine step"),
            y=alt.Y("value:Q", title=None, scale=scale),
            color=alt.Color("series:N", legend=alt.Legend(orient="bottom", title=None)),
            tooltip=["step:Q", "series:N", "value:Q"],
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"step": [current_step]})).mark_rule(color="red").encode(x="step:Q")
    )
    return alt.layer(lines, rule)


def tokens_chart(frame: pd.DataFrame, current_step: int) -> alt.LayerChart:
    """Tokens per step, split into prefill and decode: the unified token budget being spent.

    Draft tokens (speculative decoding) are a third color, shown only when the trace has any.
    """
    kinds = ["prefill_tokens", "decode_tokens"]
    if frame["draft_tokens"].any():
        kinds.append("draft_tokens")
    long = frame[["step", *kinds]].melt(
        id_vars="step",
        value_vars=kinds,
        var_name="kind",
        value_name="tokens",
    )
    bars = (
        alt.Chart(long, title="Tokens scheduled per step")
        .mark_bar()
        .encode(
            x=alt.X("step:O", title="engine step", axis=alt.Axis(labelOverlap=True)),
            y=alt.Y("tokens:Q", stack=True, title=None),
            color=alt.Color("kind:N", legend=alt.Legend(orient="bottom", title=None)),
            tooltip=["step:O", "kind:N", "tokens:Q"],
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"step": [current_step]}))
        .mark_rule(color="red", strokeDash=[4, 2])
        .encode(x="step:O")
    )
    return alt.layer(bars, rule)
