"""benchmarks/compare.py: the side-by-side table's ratios, and a missing or broken peer becomes a
word in its cells, never a failure of the script. No engine runs here (fake results)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import compare  # noqa: E402
import compare_serve  # noqa: E402
import peers  # noqa: E402
from peers import PeerResult  # noqa: E402


def _ok(tok_s: float) -> PeerResult:
    return PeerResult(data={"tok_s": tok_s})


def _row(table: str, label: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_ratios_are_vllm_mini_over_peer_and_missing_peers_say_why():
    rows = compare.ROWS
    results = {
        ("vllm_mini", "throughput fp32"): _ok(120.0),
        ("vllm_mini", "batch-1 fp32"): _ok(30.0),
        ("vLLM 0.32 CPU", "throughput fp32"): PeerResult(missing="absent"),
        ("HF generate (batches of 16)", "throughput fp32"): _ok(40.0),
        ("HF generate (batches of 16)", "batch-1 fp32"): _ok(60.0),
        ("HF generate (batches of 8)", "throughput fp32"): PeerResult(missing="failed"),
        ("vllm_mini gguf (Q4_1, dtype auto)", "throughput Q4_1"): _ok(50.0),
        ("llama.cpp (Q4_1)", "throughput Q4_1"): _ok(200.0),
    }
    table = compare.render_tables(rows, results)
    assert _row(table, "vllm_mini")[:3] == ["120.0", "skipped", "30.0"]  # the reference: no ratio
    assert _row(table, "HF generate (batches of 16)")[0] == "40.0 (3.00×)"
    assert _row(table, "HF generate (batches of 16)")[2] == "60.0 (0.50×)"
    assert _row(table, "vLLM 0.32 CPU")[0] == "absent"
    assert _row(table, "HF generate (batches of 8)")[0] == "failed"
    # The Q4_1 rows form their own table, with vllm_mini's GGUF row as reference.
    assert _row(table, "llama.cpp (Q4_1)") == ["200.0 (0.25×)", "skipped"]
    assert table.count("| engine |") == 2


def test_peer_cell_without_a_reference_figure_has_no_ratio():
    results = {
        ("vllm_mini", "throughput fp32"): PeerResult(missing="failed"),
        ("HF generate (batches of 16)", "throughput fp32"): _ok(40.0),
    }
    table = compare.render_tables(compare.ROWS[:3], results)
    assert _row(table, "HF generate (batches of 16)")[0] == "40.0"


def test_rounds_merge_into_medians_with_their_range():
    key, peer, gone = (
        ("vllm_mini", "throughput fp32"),
        ("vLLM 0.32 CPU", "throughput fp32"),
        (
            "llama.cpp (Q4_1)",
            "batch-1 Q4_1",
        ),
    )
    rounds = [
        {key: _ok(100.0), peer: _ok(90.0), gone: PeerResult(missing="absent")},
        {key: _ok(130.0), peer: PeerResult(missing="failed"), gone: PeerResult(missing="x")},
        {key: _ok(110.0), peer: _ok(120.0), gone: PeerResult(missing="y")},
    ]
    merged = compare.median_over_rounds(rounds)
    assert merged[key].data["tok_s"] == 110.0 and merged[key].data["rounds"] == [100, 130, 110]
    assert merged[peer].data["tok_s"] == 105.0  # the failed round is left out
    assert merged[gone].missing == "absent"
    table = compare.render_tables(compare.ROWS[:2], merged)
    assert _row(table, "vllm_mini")[0] == "110.0 [100-130]"
    assert _row(table, "vLLM 0.32 CPU")[0] == "105.0 [90-120] (1.05×)"


def test_run_peer_never_raises(tmp_path):
    assert peers.run_peer(tmp_path / "no" / "python", ["x.py"]).missing == "absent"
    assert peers.run_peer(sys.executable, ["-c", "raise SystemExit(3)"]).missing == "failed"
    assert peers.run_peer(sys.executable, ["-c", "print('not json')"]).missing == "no result"
    code = "print('log'); print('{\"tok_s\": 2.5}'); print('a library logging at exit')"
    ok = peers.run_peer(sys.executable, ["-c", code])
    assert ok.ok and ok.data == {"tok_s": 2.5}


def test_run_all_marks_absent_peer_venvs_without_running_them(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "PEERS_DIR", tmp_path)  # no venvs there
    ran = []

    def fake_run_peer(python, argv, env=None, timeout=0):
        ran.append(argv[1])  # the engine name
        return PeerResult(data={"throughput": {"tok_s": 10.0, "load": 1.0}})  # no batch1

    monkeypatch.setattr(compare, "run_peer", fake_run_peer)
    rows = [compare.ROWS[0], compare.ROWS[1], compare.ROWS[5]]  # vllm_mini, vLLM, llama.cpp
    paths = {"workload": "w.json", "gguf": "m.gguf", "hf_dir": "hf"}
    results = compare.run_all(rows, paths, {"throughput": 1, "batch1": 1})
    assert ran == ["vllm_mini"] * 2  # one process per dtype serves both modes
    assert results[("vllm_mini", "throughput bf16")].data["tok_s"] == 10.0
    assert results[("vllm_mini", "batch-1 bf16")].missing == "no result"
    assert results[("vLLM 0.32 CPU", "batch-1 bf16")].missing == "absent"
    assert results[("llama.cpp (Q4_1)", "throughput Q4_1")].missing == "absent"
    table = compare.render_tables(rows, results)
    assert _row(table, "vLLM 0.32 CPU") == ["absent"] * 4


def test_engine_arguments_pick_dtype_and_model():
    paths = {"workload": "w.json", "gguf": "m.gguf", "hf_dir": "hf"}
    reps = {"throughput": 1, "batch1": 3}
    argv = compare.engine_args(compare.ROWS[1], "bf16", paths, reps, threads=1)
    assert argv[1:] == ["vllm", "--workload", "w.json", "--dtype", "bfloat16", "--modes",
                        "throughput,batch1", "--repeats", "1,3", "--threads", "1",
                        "--model", "hf"]  # fmt: skip
    # The GGUF row runs vllm_mini's default path: no dtype forced.
    argv = compare.engine_args(compare.ROWS[4], "Q4_1", paths, reps)
    assert argv[argv.index("--dtype") + 1] == "auto" and "--model" not in argv
    argv = compare.engine_args(compare.ROWS[3], "fp32", paths, reps)
    assert argv[-2:] == ["--hf-batch-size", "8"]


def test_serve_table_ratios_favour_higher_throughput_and_lower_latency():
    ours = {"output_throughput": 100.0, "mean_ttft_ms": 50.0, "mean_tpot_ms": 20.0, "completed": 32}
    theirs = {"output_throughput": 80.0, "mean_ttft_ms": 100.0, "mean_tpot_ms": 10.0}
    table = compare_serve.render_serve_table({"vllm_mini": ours, "vLLM": theirs, "x": "absent"})
    assert _row(table, "vLLM")[:3] == ["80.0 (1.25×)", "100.0 (2.00×)", "10.0 (0.50×)"]
    assert _row(table, "x")[0] == "absent"


def test_serve_rounds_merge_into_medians():
    def run(tok_s: float, tpot: float) -> dict:
        return {
            "output_throughput": tok_s,
            "mean_ttft_ms": 9.0,
            "mean_tpot_ms": tpot,
            "completed": 32,
        }

    merged = compare_serve.median_of_rounds(
        [run(100, 60), "client failed", run(120, 40), run(90, 50)]
    )
    assert merged["output_throughput"] == 100 and merged["mean_tpot_ms"] == 50
    assert merged["mean_tpot_ms_rounds"] == [60, 40, 50]
    assert compare_serve.median_of_rounds(["server did not start", "x"]) == "server did not start"
    table = compare_serve.render_serve_table({"vllm_mini": merged})
    assert _row(table, "vllm_mini")[:3] == ["100.0 [90-120]", "9.0 [9-9]", "50.0 [40-60]"]


def test_serve_comparison_without_vllm_venv_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_serve, "has_peer", lambda name: False)
    text = compare_serve.serve_comparison("unused")
    assert "absent" in text and "|" not in text


@pytest.mark.parametrize("bad", ["vllm,nope"])
def test_unknown_skip_key_is_a_usage_error(bad, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["compare.py", "--skip", bad])
    with pytest.raises(SystemExit, match="2"):
        compare.main()
