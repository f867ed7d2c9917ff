"""HTML for the KV-cache views: the physical block pool grid and each request's block table.

Stage 4 teaching tool. Mirrors the data of vllm/v1/core/block_pool.py (every physical block, its
ref count and its hash while it sits cached in the free queue) and of kv_cache_manager.py (each
request's block table, logical block i -> physical block). Pure functions from a StepTrace to an
HTML string, so tests can check them without Streamlit. Stage 11: the slots that rejected draft
tokens wrote this step are hatched as "rolled back" (vllm/v1/core/sched/scheduler.py
`update_from_output` lowers num_computed_tokens past them). Stage 10: blocks holding image
placeholder tokens carry a dark bar (their KV comes from image embeddings, and their prefix-cache
key includes the image's hash, vllm/v1/core/kv_cache_utils.py). Next: step_views.py.
"""

from __future__ import annotations

from html import escape

from vllm_mini.engine.trace import StepTrace, Trace

# Qualitative palette (Tableau 10 + extras), readable with dark text.
PALETTE = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
    "#ff9da7", "#9c755f", "#86bcb6", "#d4a6c8", "#8cd17d", "#f1ce63", "#a0cbe8",
]  # fmt: skip

CSS = """
<style>
.kv-grid { display: flex; flex-wrap: wrap; gap: 4px; margin: 4px 0 10px 0; }
.kv-block { width: 46px; height: 46px; border: 1px solid #888; border-radius: 4px;
  font: 11px/1.15 monospace; display: flex; flex-direction: column; align-items: center;
  justify-content: center; position: relative; color: #111; background: #fff; }
.kv-block .kv-id { font-size: 9px; opacity: .75; }
.kv-block .kv-owner { font-weight: 700; }
.kv-block .kv-ref { position: absolute; top: -6px; right: -6px; background: #111; color: #fff;
  border-radius: 8px; padding: 0 4px; font-size: 10px; }
.kv-cached { background: repeating-linear-gradient(45deg, #ddd 0 4px, #f6f6f6 4px 8px);
  color: #666; border-style: dashed; }
.kv-free { background: #fff; color: #bbb; border-color: #ccc; }
.kv-null { background: #333; color: #eee; }
.kv-legend { display: flex; gap: 14px; font: 12px sans-serif; align-items: center; }
.kv-legend .kv-block { width: 22px; height: 16px; display: inline-block; }
.kv-tables { font: 12px monospace; }
.kv-table-row { display: flex; align-items: center; gap: 3px; margin: 3px 0; flex-wrap: wrap; }
.kv-req { min-width: 150px; padding: 2px 6px; border-radius: 4px; color: #111; }
.kv-cell { width: 52px; height: 26px; border: 1px solid #777; border-radius: 3px;
  position: relative; background: #fff; text-align: center; line-height: 26px; }
.kv-cell .kv-fill { position: absolute; left: 0; bottom: 0; top: 0; opacity: .55; }
.kv-cell span { position: relative; }
.kv-empty { color: #999; font-style: italic; }
.kv-cell .kv-rolled { position: absolute; top: 0; bottom: 0; border-left: 1px dashed #b00;
  background: repeating-linear-gradient(45deg, #d33 0 2px, transparent 2px 5px); opacity: .8; }
.kv-block[data-rolled-back] { outline: 2px dashed #d33; outline-offset: 1px; }
.kv-legend .kv-cell { width: 22px; height: 16px; display: inline-block; line-height: 16px; }
.kv-block[data-image-slots], .kv-cell[data-image-slots] { box-shadow: inset 0 -5px 0 #222; }
</style>
"""


def request_colors(trace: Trace) -> dict[str, str]:
    """A stable color per request id, in order of first appearance in the trace."""
    colors: dict[str, str] = {}
    for step in trace.steps:
        for rid in [*step.new_request_ids, *(r.request_id for r in step.requests)]:
            if rid not in colors:
                colors[rid] = PALETTE[len(colors) % len(PALETTE)]
    return colors


def block_owners(step: StepTrace) -> dict[int, list[str]]:
    """Physical block id -> the requests whose block table points at it."""
    owners: dict[int, list[str]] = {}
    for request in step.requests:
        for block_id in request.block_ids:
            owners.setdefault(block_id, []).append(request.request_id)
    return owners


def _background(owner_ids: list[str], colors: dict[str, str]) -> str:
    if len(owner_ids) == 1:
        return colors.get(owner_ids[0], "#bbb")
    # A shared block shows one diagonal stripe per owner.
    stops = []
    for i, rid in enumerate(owner_ids):
        color = colors.get(rid, "#bbb")
        stops.append(f"{color} {i * 8}px {(i + 1) * 8}px")
    return f"repeating-linear-gradient(135deg, {', '.join(stops)})"


def image_slots(spans: list[list[int]], logical: int, block_size: int) -> int:
    """How many positions of logical block `logical` are image placeholder tokens (stage 10)."""
    start, end = logical * block_size, (logical + 1) * block_size
    return sum(max(0, min(end, o + n) - max(start, o)) for o, n in spans)


def image_slots_by_block(step: StepTrace, block_size: int) -> dict[int, int]:
    """Physical block id -> image placeholder slots in it (a shared block counts them once)."""
    slots: dict[int, int] = {}
    for r in step.requests:
        for logical, physical in enumerate(r.block_ids):
            n = image_slots(r.image_spans, logical, block_size)
            if n:
                slots[physical] = max(slots.get(physical, 0), n)
    return slots


def rolled_back_by_block(step: StepTrace, block_size: int) -> dict[int, int]:
    """Physical block id -> slots in it that rejected drafts wrote this step (stage 11)."""
    rolled: dict[int, int] = {}
    for r in step.requests:
        for logical, physical in enumerate(r.block_ids):
            n = len(
                rolled_back_slots(r.num_computed_tokens, r.rejected_tokens, logical, block_size)
            )
            if n:
                rolled[physical] = rolled.get(physical, 0) + n
    return rolled


def block_grid_html(step: StepTrace, colors: dict[str, str], block_size: int = 0) -> str:
    """The whole physical pool: one square per block, colored by owner, hatched when cached.

    With `block_size`, blocks holding rolled-back draft slots get a dashed red outline.
    """
    owners = block_owners(step)
    rolled = rolled_back_by_block(step, block_size) if block_size else {}
    images = image_slots_by_block(step, block_size) if block_size else {}
    cells = []
    for block_id, (state, ref_cnt, block_hash) in enumerate(step.blocks):
        owner_ids = owners.get(block_id, [])
        label, style, badge = "", "", ""
        if state == "owned":
            label = ",".join(owner_ids) if len(owner_ids) <= 2 else f"{len(owner_ids)} reqs"
            style = f' style="background: {_background(owner_ids, colors)}"'
            if ref_cnt > 1:
                badge = f'<span class="kv-ref">×{ref_cnt}</span>'
        elif state == "cached":
            label = block_hash[:4]
        title = f"block {block_id}: {state}, ref_cnt={ref_cnt}"
        if block_hash:
            title += f", hash {block_hash}"
        if owner_ids:
            title += f", used by {', '.join(owner_ids)}"
        extra = ""
        if block_id in rolled:
            slots = "slot" if rolled[block_id] == 1 else "slots"
            title += f", {rolled[block_id]} {slots} rolled back (rejected drafts)"
            extra = f' data-rolled-back="{rolled[block_id]}"'
        if block_id in images:
            title += f", {images[block_id]} image placeholder slots"
            extra += f' data-image-slots="{images[block_id]}"'
        cells.append(
            f'<div class="kv-block kv-{escape(state)}" data-block-id="{block_id}" '
            f'data-state="{escape(state)}" data-ref-cnt="{ref_cnt}"{extra} title="{escape(title)}"'
            f"{style}>"
            f'<span class="kv-id">#{block_id}</span><span class="kv-owner">{escape(label)}</span>'
            f"{badge}</div>"
        )
    return (
        f'<div id="kv-block-grid" class="kv-grid" data-num-blocks="{len(step.blocks)}">'
        f"{''.join(cells)}</div>"
    )


def legend_html(has_images: bool = False) -> str:
    items = [
        ("kv-owned", "owned by a request (color), ×n = ref count of a shared block", "#4e79a7"),
        ("kv-cached", "free but cached: its hash can still be hit by the prefix cache", ""),
        ("kv-free", "free, no content worth keeping", ""),
    ]
    parts = []
    for cls, text, color in items:
        style = f' style="background: {color}"' if color else ""
        parts.append(f'<span><span class="kv-block {cls}"{style}></span> {escape(text)}</span>')
    if has_images:
        text = "dark bar: holds image placeholder tokens (the image's hash joins the block's key)"
        parts.append(
            f'<span><span class="kv-block kv-owned" data-image-slots="1" '
            f'style="background: #4e79a7"></span> {escape(text)}</span>'
        )
    return f'<div class="kv-legend">{"".join(parts)}</div>'


def tables_legend_html() -> str:
    """Legend of the block tables when the trace has speculative decoding."""
    fill = '<span class="kv-cell"><span class="kv-fill" style="width: 60%; background: #4e79a7">'
    rolled = '<span class="kv-cell"><span class="kv-rolled" style="left: 40%; width: 60%">'
    items = [
        (fill, "computed KV (the first num_computed_tokens slots)"),
        (rolled, "rolled back: KV written for drafts the target rejected this step, past "
                 "num_computed_tokens, overwritten by the next step"),
    ]  # fmt: skip
    parts = [f"<span>{cell}</span></span> {escape(text)}</span>" for cell, text in items]
    return f'<div class="kv-legend" id="kv-tables-legend">{"".join(parts)}</div>'


def spec_summary(spec: int, accepted: int, rejected: int) -> str:
    """ "3 drafts verified, 1 accepted, 2 slots rolled back" (the cells' and header's title)."""
    drafts = "draft" if spec == 1 else "drafts"
    slots = "slot" if rejected == 1 else "slots"
    return f"{spec} {drafts} verified, {accepted} accepted, {rejected} {slots} rolled back"


def rolled_back_slots(computed: int, rejected: int, logical: int, block_size: int) -> range:
    """Offsets inside logical block `logical` of the positions computed .. computed+rejected-1."""
    start = max(computed, logical * block_size)
    end = min(computed + rejected, (logical + 1) * block_size)
    return range(start - logical * block_size, max(end, start) - logical * block_size)


def block_tables_html(step: StepTrace, block_size: int, colors: dict[str, str]) -> str:
    """Each live request's block table: logical block i -> physical block, with its fill level.

    A block holds KV for `block_size` token positions; the KV of the first `num_computed_tokens`
    positions is written, so all blocks but the last are full and the last is partly filled.
    With speculative decoding, the target also wrote KV for every draft it verified; the
    rejected ones' slots lie just past num_computed_tokens (hatched "rolled back"). Nothing frees
    them: the request still owns the block, and its next step writes the real tokens there.
    """
    rows = []
    for request in step.requests:
        color = colors.get(request.request_id, "#bbb")
        computed, rejected = request.num_computed_tokens, request.rejected_tokens
        summary = spec_summary(request.spec_tokens, request.accepted_tokens, rejected)
        spec = ""
        if request.spec_tokens:
            # One step = the last token's successor (+1) plus every accepted draft.
            spec = (
                f' <span class="kv-spec" title="{escape(summary)}">+1 token '
                f"+{request.accepted_tokens} drafts accepted, {rejected} rolled back</span>"
            )
        head = (
            f'<span class="kv-req" style="background: {color}">{escape(request.request_id)} '
            f"{escape(request.status.lower())} {computed}/{request.num_tokens} tok{spec}</span>"
        )
        cells = []
        for logical, physical in enumerate(request.block_ids):
            filled = min(max(computed - logical * block_size, 0), block_size)
            ref_cnt = step.blocks[physical][1] if physical < len(step.blocks) else 0
            shared = f" shared ×{ref_cnt}" if ref_cnt > 1 else ""
            title = f"logical {logical} -> physical {physical}: {filled}/{block_size} slots{shared}"
            rolled = rolled_back_slots(computed, rejected, logical, block_size)
            overlay, data = "", ""
            num_image = image_slots(request.image_spans, logical, block_size)
            if num_image:
                title += f"; {num_image} image placeholder slots"
                data = f' data-image-slots="{num_image}"'
            if rolled:
                title += f"; {len(rolled)} rolled back ({summary})"
                data += f' data-rolled-back="{len(rolled)}"'
                overlay = (
                    f'<div class="kv-rolled" style="left: {100 * rolled.start // block_size}%; '
                    f'width: {100 * len(rolled) // block_size}%"></div>'
                )
            cells.append(
                f'<div class="kv-cell" data-logical="{logical}" data-physical="{physical}" '
                f'data-filled="{filled}"{data} title="{escape(title)}">'
                f'<div class="kv-fill" style="width: {100 * filled // block_size}%; '
                f'background: {color}"></div>{overlay}<span>{logical}→{physical}</span></div>'
            )
        if not cells:
            cells.append('<span class="kv-empty">no blocks (waiting)</span>')
        spec_data = (
            f' data-spec-tokens="{request.spec_tokens}" data-accepted="{request.accepted_tokens}" '
            f'data-rolled-back="{rejected}"'
            if request.spec_tokens
            else ""
        )
        rows.append(
            f'<div class="kv-table-row" data-request-id="{escape(request.request_id)}" '
            f'data-num-blocks="{len(request.block_ids)}"{spec_data}>{head}{"".join(cells)}</div>'
        )
    if not rows:
        rows.append('<div class="kv-empty">no live requests at this step</div>')
    return f'<div id="kv-block-tables" class="kv-tables">{"".join(rows)}</div>'
