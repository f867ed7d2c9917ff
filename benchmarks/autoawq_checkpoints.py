"""AWQ checkpoints made by AutoAWQ itself (the tool that defined the `awq` format), cached.

Stage 7. No vLLM counterpart: vLLM users download AutoAWQ checkpoints; we make them here from
the float models of benchmarks/quantized_checkpoints.py (SmolLM2 or its tiny random Llama).
AutoAWQ 0.2.9 (its last release; the project now points to llm-compressor) runs on this CPU
with our transformers, but wants its own venv (`~/.cache/vllm_mini/autoawq-tools/venv`, torch
2.13.0 first, so pip keeps the pinned one). Its CPU inference path needs Intel's
extension, so the peer here (`hf_logits`) instead dequantizes the checkpoint with AutoAWQ's own
unpacking (`awq.utils.packing_utils.dequantize_gemm`) and runs HF transformers' float model:
an unpacking written by the format's authors, not by us.

    .venv/bin/python benchmarks/autoawq_checkpoints.py --model tiny     # prints the path
    .venv/bin/python benchmarks/autoawq_checkpoints.py --model smollm2

Calibration: windows of Python's pydoc topics (the same text as quantized_checkpoints.py).

On a CPU AutoAWQ 0.2.9's scale search is broken, so its SmolLM2 checkpoint is unusable
(perplexity ~10^5) and the benchmarks take AWQ from llm-compressor instead
(`quantized_checkpoints.py w4a16-awq`). `AwqQuantizer._compute_best_scale` backs the block's
weights up as `{k: v.cpu() ...}`, which on a CPU returns the live tensors themselves; the grid's
in-place `fc.weight.mul_(scales)` then scales the backup too. From the second grid point on,
every candidate is scored on W * s0 (s0: the first point's scales), so the first point always
wins, and the layer is left holding W * s0 when the chosen s0 is applied again. Measured on the
cached SmolLM2 checkpoint: all 60 RMSNorms were divided by exactly that s0 (to 1.2e-7), and the
dequantized q/k/v/gate weights of all 30 layers sit 9-16% from W * s0^2 (round-to-nearest's own
error is ~10%; layer 0's clipped v_proj 27%) but 11-65% from W * s0, the intended product.
QUANTIZE below therefore hands the search a state_dict of copies. On SmolLM2's first two layers
(16 windows) the unpatched grid picks ratio 0 for all 6 mappings and scores ratio 0.5 30-170x
worse; patched, it picks 0.05-0.65 for 5 of them and cuts the block error to 0.13-0.99x of
ratio 0's. A whole SmolLM2 run with the patch is not measured yet (40+ min on the busy machine),
and checkpoints cached before it (no "patch" in their stamp) keep the broken scales: delete the
directory to remake one. The format is AutoAWQ's own either way, so the tiny model's checkpoint
tests our loader all the same.
Next: vllm_mini/model_executor/layers/quantization/awq.py, which loads what this writes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantized_checkpoints import build_tool_venv, cache_root, source_model  # noqa: E402

TOOL_PACKAGES = ["autoawq==0.2.9"]
QUANT_CONFIG = {"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"}
CALIBRATION_SAMPLES = 32
CALIBRATION_TOKENS = 256


def tool_python() -> Path:
    """The AutoAWQ venv's python, built on first use."""
    return build_tool_venv(cache_root() / "autoawq-tools" / "venv", TOOL_PACKAGES, "AutoAWQ")


QUANTIZE = """
import json, sys, torch
from pydoc_data.topics import topics
from awq import AutoAWQForCausalLM
from awq.quantize.quantizer import AwqQuantizer
from transformers import AutoTokenizer
search = AwqQuantizer._compute_best_scale
def compute_best_scale(self, x, w_mean, x_mean, module2inspect, *args, **kwargs):
    # AutoAWQ backs the block up with `v.cpu()`: on a CPU, the live weights (see the docstring)
    live = module2inspect.state_dict
    module2inspect.state_dict = lambda *a, **k: {n: t.clone() for n, t in live(*a, **k).items()}
    try:
        return search(self, x, w_mean, x_mean, module2inspect, *args, **kwargs)
    finally:
        del module2inspect.state_dict
AwqQuantizer._compute_best_scale = compute_best_scale
src, out, cfg, samples, tokens = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
model = AutoAWQForCausalLM.from_pretrained(src, torch_dtype=torch.float32, device_map="cpu")
tok = AutoTokenizer.from_pretrained(src)
words = " ".join(topics[k] for k in sorted(topics)).split()
if tok(" ".join(words[:50]))["input_ids"].count(tok.unk_token_id) > 25:  # the tiny made-up vocab
    words = [f"w{3 + hash(w) % (tok.vocab_size - 3)}" for w in words]
    per_sample = tokens
else:  # AutoAWQ drops samples longer than max_calib_seq_len; English is ~1.3 tokens per word
    per_sample = tokens // 2
step = len(words) // samples
calib = [" ".join(words[i * step : i * step + per_sample]) for i in range(samples)]
model.quantize(tok, quant_config=cfg, calib_data=calib, max_calib_samples=samples,
               max_calib_seq_len=tokens, n_parallel_calib_samples=4)
model.save_quantized(out)
tok.save_pretrained(out)
"""


def autoawq_checkpoint(model: str = "tiny") -> Path:
    """AutoAWQ's checkpoint of `model` ("tiny" or "smollm2"), made on first use (cached)."""
    name = "awq-autoawq" if model == "smollm2" else f"awq-autoawq-{model}"
    out = cache_root() / "quantized" / name
    stamp = out / ".vllm_mini_recipe.json"
    if stamp.exists():
        return out
    src = source_model(model)
    python = tool_python()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    args = [src, tmp, json.dumps(QUANT_CONFIG), CALIBRATION_SAMPLES, CALIBRATION_TOKENS]
    env = {**os.environ, "PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([str(python), "-c", QUANTIZE, *map(str, args)], check=True, env=env)
    info = {"tool": TOOL_PACKAGES[0], "quant_config": QUANT_CONFIG,
            "calibration": f"{CALIBRATION_SAMPLES} x {CALIBRATION_TOKENS} tokens of pydoc topics",
            "patch": "scale search backs the weights up as copies (CPU aliasing)",
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    (tmp / ".vllm_mini_recipe.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


PEER = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import load_file
from awq.utils.packing_utils import dequantize_gemm
from transformers import AutoConfig, AutoModelForCausalLM
path = Path(sys.argv[1])
config = AutoConfig.from_pretrained(path)
group_size = config.quantization_config["group_size"]
del config.quantization_config
state = load_file(str(path / "model.safetensors"))
for name in [n for n in state if n.endswith(".qweight")]:
    p = name[: -len("qweight")]
    # float32 scales: the product (q - z) * s then rounds like ours, not in float16
    w = dequantize_gemm(state.pop(p + "qweight"), state.pop(p + "qzeros"),
                        state.pop(p + "scales").float(), 4, group_size)  # [in, out]
    state[p + "weight"] = w.t().contiguous()
model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
model.load_state_dict(state, strict=False)
model.tie_weights()
ids = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(ids.unsqueeze(0)).logits[0], sys.argv[3])
"""


def hf_logits(path: Path, ids, workdir: Path):
    """Logits of HF's float model on AutoAWQ's own dequantization of `path` (see docstring)."""
    import torch

    torch.save(ids, workdir / "ids.pt")
    cmd = [
        str(tool_python()),
        "-c",
        PEER,
        str(path),
        str(workdir / "ids.pt"),
        str(workdir / "o.pt"),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return torch.load(workdir / "o.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "smollm2"])
    print(autoawq_checkpoint(parser.parse_args().model))


if __name__ == "__main__":
    main()
