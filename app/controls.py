"""The sidebar: run the engine on a workload, or load a saved trace to replay.

Stages 4-5 teaching tool. Mirrors the engine arguments of vllm/engine/arg_utils.py (block_size,
num_gpu_blocks_override, max_num_seqs, max_num_batched_tokens, enable_prefix_caching, and
speculative_config's num_speculative_tokens for an n-gram run): every control here is one
EngineArgs field or one knob of the workload. The chosen trace is kept in
st.session_state["trace"]. Next: block_grid.py.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import streamlit as st

from app.tiny_model import build_tiny_model
from app.workloads import WORKLOADS, parse_prompts, to_tiny_vocab
from vllm_mini.engine.trace import Trace

# Set to a trace JSON path to open the app in replay mode with that trace (used by the browser test).
TRACE_ENV = "VLLM_MINI_VIZ_TRACE"
MODEL_LABELS = {
    "tiny": "tiny random Llama (2 layers, loads in seconds)",
    "smollm2": "SmolLM2-135M-Instruct (the default LLM())",
}
_ENGINE_KEYS = ("block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens")
_RUN_WIDGETS = (
    *_ENGINE_KEYS, "model_kind", "workload", "prompts", "enable_prefix_caching", "max_tokens",
    "vary_lengths", "ignore_eos", "arrival_interval", "temperature", "num_speculative_tokens",
)  # fmt: skip


@st.cache_resource(show_spinner="Building the tiny random model...")
def tiny_model_dir() -> str:
    return str(build_tiny_model(Path(tempfile.mkdtemp(prefix="vllm_mini_viz_")) / "tiny"))


@st.cache_resource(max_entries=2, show_spinner="Loading the model and allocating the KV cache...")
def cached_llm(model: str | None, engine_kwargs: tuple[tuple[str, object], ...]) -> tuple:
    """One LLM per engine configuration; the lock keeps two browser tabs from sharing a run."""
    from app.record import build_llm

    return build_llm(model, dict(engine_kwargs)), threading.Lock()


def apply_workload() -> None:
    """on_change callback: copy the chosen preset's prompts and settings into the widgets."""
    workload = WORKLOADS.get(st.session_state["workload"])
    if workload is None:
        return
    defaults = dict(vary_lengths=False, enable_prefix_caching=True, num_speculative_tokens=0)
    preset = {**defaults, **workload.settings[st.session_state["model_kind"]]}
    for key, value in preset.items():
        st.session_state[key] = value
    st.session_state["prompts"] = "\n".join(workload.prompts)


def _init_state() -> None:
    if st.session_state.get("initialized"):
        # Streamlit forgets the value of a widget that was not drawn in the last run; re-setting
        # the run-mode values keeps them while the replay sidebar is shown.
        for key in _RUN_WIDGETS:
            if key in st.session_state:
                st.session_state[key] = st.session_state[key]
        return
    st.session_state["initialized"] = True
    st.session_state.update(
        mode="Run the engine",
        model_kind="tiny",
        workload="prefix",
        ignore_eos=True,
        temperature=0.0,
    )
    apply_workload()
    path = os.environ.get(TRACE_ENV)
    if path:
        st.session_state["trace"] = Trace.load(path)
        st.session_state["trace_source"] = f"{Path(path).name} (from ${TRACE_ENV})"
        st.session_state["mode"] = "Replay a saved trace"
        # ?step=N opens the replay at step N (the docs screenshot uses it).
        step = st.query_params.get("step", "0")
        st.session_state["step"] = int(step) if step.isdigit() else 0


def sidebar() -> None:
    _init_state()
    with st.sidebar:
        mode = st.radio("Mode", ["Run the engine", "Replay a saved trace"], key="mode")
        if mode == "Run the engine":
            _run_controls()
        else:
            _replay_controls()


def _run_controls() -> None:
    st.radio(
        "Model", list(MODEL_LABELS), format_func=MODEL_LABELS.get, key="model_kind",
        on_change=apply_workload,
    )  # fmt: skip
    st.selectbox(
        "Workload", [*WORKLOADS, "custom"], key="workload", on_change=apply_workload,
        format_func=lambda k: WORKLOADS[k].title if k in WORKLOADS else "custom prompts",
    )  # fmt: skip
    workload = WORKLOADS.get(st.session_state["workload"])
    if workload is not None:
        st.caption(f"{workload.description} See {workload.lesson}.")
    st.text_area("Prompts, one per line", key="prompts", height=150)
    if st.session_state["model_kind"] == "tiny":
        st.caption(
            "The tiny model's word-level vocabulary is w3..w383: each word is mapped to one of "
            "them (same word, same token), so shared prefixes stay shared."
        )
    st.markdown("**KV cache** (CacheConfig)")
    st.select_slider("block_size (tokens per block)", [1, 2, 4, 8, 16, 32], key="block_size")
    st.number_input("KV blocks (num_gpu_blocks_override)", 4, 1024, key="num_blocks")
    st.checkbox("enable_prefix_caching", key="enable_prefix_caching")
    st.markdown("**Scheduler** (SchedulerConfig)")
    st.number_input("max_num_seqs", 1, 64, key="max_num_seqs")
    st.number_input("max_num_batched_tokens (token budget)", 1, 4096, key="max_num_batched_tokens")
    st.markdown("**Speculative decoding** (SpeculativeConfig, method ngram)")
    st.number_input(
        "num_speculative_tokens (n-gram drafts per step, 0 = off)", 0, 8,
        key="num_speculative_tokens",
    )  # fmt: skip
    st.markdown("**Workload**")
    st.number_input("max_tokens per request", 1, 256, key="max_tokens")
    st.checkbox("vary output lengths (request i gets (i % 4 + 1) / 4 of it)", key="vary_lengths")
    st.checkbox("ignore_eos (predictable lengths)", key="ignore_eos")
    st.number_input("new request every k steps (0 = all at once)", 0, 50, key="arrival_interval")
    st.slider("temperature", 0.0, 1.5, step=0.1, key="temperature")
    if st.button("Run the engine", type="primary", key="run"):
        _run()


def _run() -> None:
    # Imported here: replay mode never loads torch or the model stack.
    from app.record import RunSettings, record_trace

    state = st.session_state
    kind = state["model_kind"]
    prompts = parse_prompts(state["prompts"])
    if kind == "tiny":
        prompts = [to_tiny_vocab(p) for p in prompts]
    settings = RunSettings(
        model=tiny_model_dir() if kind == "tiny" else None,
        **{
            k: int(state[k])
            for k in (*_ENGINE_KEYS, "max_tokens", "arrival_interval", "num_speculative_tokens")
        },
        enable_prefix_caching=bool(state["enable_prefix_caching"]),
        vary_lengths=bool(state["vary_lengths"]),
        ignore_eos=bool(state["ignore_eos"]),
        temperature=float(state["temperature"]),
    )
    progress = st.progress(0.0, text="Loading the model...")

    def on_step(steps: int, finished: int) -> None:
        text = f"step {steps}: {finished}/{len(prompts)} requests finished"
        progress.progress(finished / max(len(prompts), 1), text=text)

    try:
        llm, lock = cached_llm(settings.model, tuple(sorted(settings.engine_kwargs().items())))
        with lock:
            trace = record_trace(llm, prompts, settings, on_step=on_step)
    except (ValueError, RuntimeError) as err:
        st.error(str(err))
        return
    finally:
        progress.empty()
    trace.model = MODEL_LABELS[kind]
    state["trace"] = trace
    state["trace_source"] = f"recorded run ({len(prompts)} prompts)"
    state["step"] = 0
    state["playing"] = False


def _replay_controls() -> None:
    upload = st.file_uploader("Trace JSON (from the download button)", type=["json"], key="upload")
    if upload is not None and st.session_state.get("upload_id") != upload.file_id:
        try:
            st.session_state["trace"] = Trace.from_json(upload.getvalue().decode())
        except (ValueError, KeyError, TypeError) as err:
            st.error(f"not a vllm_mini trace: {err}")
            return
        st.session_state["upload_id"] = upload.file_id
        st.session_state["trace_source"] = upload.name
        st.session_state["step"] = 0
        st.session_state["playing"] = False
    st.caption(
        "Record a trace in run mode (or in Python: `llm.llm_engine.trace_recorder = "
        "TraceRecorder(llm.llm_engine)`, then `trace.save(path)`), download it, load it here."
    )
