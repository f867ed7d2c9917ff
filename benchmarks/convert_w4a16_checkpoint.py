"""Repack a compressed-tensors W4A16 checkpoint into the classic GPTQ or AWQ layout. Stage 7.

No vLLM counterpart. Why it exists: the classic `gptq` format is written by AutoGPTQ, optimum
and gptqmodel, and none of them runs here (gptqmodel 7.7 pulls torch 2.14.1 with CUDA
libraries; AutoGPTQ and optimum's GPTQ path need it or a GPU). AWQ's own tool, AutoAWQ, does
run on this CPU (benchmarks/autoawq_checkpoints.py). llm-compressor (quantized_checkpoints.py)
runs too and writes GPTQ- or AWQ-chosen 4-bit codes in compressed-tensors' `pack-quantized`
layout. This script moves those codes, unchanged, into the classic layouts (vllm_mini/
model_executor/layers/quantization/utils/w4a16_formats.py documents all three), so the `gptq`
method can load codes chosen by a real GPTQ run. The result is labelled: its
quantization_config carries `"converted_from"`.

    .venv/bin/python benchmarks/convert_w4a16_checkpoint.py SRC DST --format gptq   # or awq

GPTQ output uses the v1 zero convention (stored zero - 1, `checkpoint_format: "gptq"`) and
keeps act-order (`weight_g_idx` -> `g_idx`, `desc_act: true`); AWQ has no act-order, so a
source with g_idx is refused. Next: tests/quantization/test_w4a16_checkpoints.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vllm_mini.model_executor.layers.quantization.utils.w4a16_formats import (
    awq_from_int4,
    compressed_tensors_to_int4,
    gptq_from_int4,
)

SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")


def _w4a16_args(config: dict) -> dict:
    """The one weight-only 4-bit group of a compressed-tensors quantization_config."""
    qc = config.get("quantization_config") or {}
    if qc.get("quant_method") != "compressed-tensors" or qc.get("format") != "pack-quantized":
        raise ValueError("convert: the source must be a compressed-tensors pack-quantized model")
    groups = list(qc.get("config_groups", {}).values())
    if len(groups) != 1 or groups[0].get("input_activations"):
        raise ValueError("convert: the source must have one weight-only config group")
    weights = groups[0]["weights"]
    if weights.get("num_bits") != 4 or weights.get("type", "int") != "int":
        raise ValueError(f"convert: weights must be 4-bit int; got {weights}")
    return weights


def _read(src: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(src.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                tensors[name] = f.get_tensor(name)
    return tensors


def convert(src: Path, dst: Path, fmt: str) -> Path:
    """Write `src` (compressed-tensors W4A16) to `dst` in layout `fmt` ("gptq" or "awq")."""
    if fmt not in ("gptq", "awq"):
        raise ValueError(f"convert: format must be 'gptq' or 'awq'; got {fmt!r}")
    config = json.loads((src / "config.json").read_text())
    weights = _w4a16_args(config)
    symmetric = bool(weights.get("symmetric", True))
    group_size = -1 if weights.get("strategy") == "channel" else int(weights["group_size"])
    tensors = _read(src)
    out: dict[str, torch.Tensor] = {}
    act_order = False
    for name, tensor in tensors.items():
        if any(name.endswith("." + s) for s in SUFFIXES):
            if not name.endswith(".weight_packed"):
                continue  # read with its weight_packed below
            prefix = name[: -len("weight_packed")]
            g_idx = tensors.get(prefix + "weight_g_idx")
            weight = compressed_tensors_to_int4(
                tensor, tensors[prefix + "weight_scale"],
                tensors.get(prefix + "weight_zero_point"), g_idx,
            )  # fmt: skip
            act_order = act_order or weight.g_idx is not None
            packed = gptq_from_int4(weight) if fmt == "gptq" else awq_from_int4(weight)
            scale_dtype = tensors[prefix + "weight_scale"].dtype
            packed["scales"] = packed["scales"].to(scale_dtype)
            out.update({prefix + key: value for key, value in packed.items()})
        else:
            out[name] = tensor
    note = f"compressed-tensors pack-quantized by benchmarks/convert_w4a16_checkpoint.py ({src})"
    if fmt == "gptq":
        qc = {"quant_method": "gptq", "bits": 4, "group_size": group_size,
              "desc_act": act_order, "sym": symmetric, "checkpoint_format": "gptq"}  # fmt: skip
    else:
        qc = {"quant_method": "awq", "bits": 4, "group_size": group_size,
              "zero_point": True, "version": "gemm"}  # fmt: skip
    config["quantization_config"] = {**qc, "converted_from": note}
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(dst / "model.safetensors"))
    for f in src.iterdir():
        skip = f.suffix == ".safetensors" or f.name.endswith(".index.json")  # one new file
        if f.is_file() and not skip and f.name != "config.json":
            shutil.copy(f, dst / f.name)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--format", choices=("gptq", "awq"), required=True)
    args = parser.parse_args()
    print(convert(args.src, args.dst, args.format))


if __name__ == "__main__":
    main()
