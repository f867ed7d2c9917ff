"""Quantized checkpoints made by the real tool, llm-compressor, cached on disk. Stage 7.

No vLLM counterpart: vLLM users download checkpoints that llm-compressor produced; we make them
here, from the default model (SmolLM2-135M-Instruct) or a tiny random Llama, so tests and
benchmarks can load what vLLM would load. llm-compressor pins an older transformers than our
`.venv`, so it lives in its own venv (`~/.cache/vllm_mini/quant-tools/venv`), built on first use
with the pinned torch installed first (pip then keeps it). This file runs in both venvs: in
`.venv` it prepares the float source model and starts itself in the tool venv (`--inside`),
where it imports llm-compressor and applies one recipe.

A recipe is one entry of RECIPES: a function that returns llm-compressor modifiers (called
inside the tool venv) and whether it needs calibration text. Calibration text is English prose
that every Python ships: the help topics of `pydoc_data/topics.py`. Results are cached under
`~/.cache/vllm_mini/quantized/<recipe>/` (SmolLM2) and `<recipe>-tiny/` (tiny Llama); a stamp
file records the tool versions, so a finished checkpoint is reused.

    .venv/bin/python benchmarks/quantized_checkpoints.py w8a8-int8            # prints the path
    .venv/bin/python benchmarks/quantized_checkpoints.py fp8-dynamic --model tiny
    .venv/bin/python benchmarks/quantized_checkpoints.py --list

Next: vllm_mini/model_executor/layers/quantization/compressed_tensors/compressed_tensors.py,
which reads what these write.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Only the standard library at module level: the tool venv imports this file too.

TOOL_PACKAGES = ["llmcompressor==0.14.0.1"]  # brings compressed-tensors 0.19.0, transformers 5.17
TORCH_PIN = "torch==2.13.0"
MODELS = ("smollm2", "tiny")
CALIBRATION_SAMPLES = 64
CALIBRATION_TOKENS = 256
STAMP = ".vllm_mini_recipe.json"  # written last: its presence means the checkpoint is complete


def cache_root() -> Path:
    return Path(os.environ.get("VLLM_MINI_CACHE_DIR") or Path.home() / ".cache" / "vllm_mini")


def tool_venv() -> Path:
    return cache_root() / "quant-tools" / "venv"


# ---- recipes (their bodies run inside the tool venv) -------------------------------------------


def _w8a8_int8_modifiers() -> list:
    """SmoothQuant moves activation outliers into the weights, then GPTQ rounds int8 weights."""
    from llmcompressor.modifiers.quantization import GPTQModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    return [
        SmoothQuantModifier(smoothing_strength=0.8),
        # Preset W8A8: int8 weights per output channel, int8 activations per token, dynamic.
        GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
    ]


def _w8a8_int8_rtn_modifiers() -> list:
    """The same format without GPTQ (SmolLM2's GPTQ takes 30+ min on a busy 2-core machine)."""
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    return [
        SmoothQuantModifier(smoothing_strength=0.8),
        QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
    ]


def _fp8_dynamic_modifiers() -> list:
    """Round-to-nearest float8_e4m3fn weights per channel; activations quantized at run time."""
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])]


def _fp8_tensor_modifiers() -> list:
    """FP8 weights with ONE scale per tensor (q, k, v each get their own) + dynamic tokens."""
    from llmcompressor.modifiers.quantization import QuantizationModifier

    group = {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True},
        "input_activations": {
            "num_bits": 8,
            "type": "float",
            "strategy": "token",
            "symmetric": True,
            "dynamic": True,
        },
    }
    return [QuantizationModifier(config_groups={"group_0": group}, ignore=["lm_head"])]


def _w4a16_groups(symmetric: bool, actorder: str | None = None) -> dict:
    """4-bit int weights in groups of 64 (SmolLM2's 576 inputs are 9 groups; 128 would not
    divide them), float activations: what vLLM calls W4A16, stored pack-quantized."""
    weights = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 64}
    weights["symmetric"] = symmetric
    if actorder is not None:
        weights["actorder"] = actorder
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


def _w4a16_gptq_modifiers() -> list:
    """GPTQ, symmetric 4-bit groups (the W4A16 preset with group size 64)."""
    from llmcompressor.modifiers.quantization import GPTQModifier

    return [GPTQModifier(config_groups=_w4a16_groups(True), ignore=["lm_head"])]


def _w4a16_gptq_asym_modifiers() -> list:
    """GPTQ, asymmetric 4-bit groups: a zero point per group (W4A16_ASYM, group size 64)."""
    from llmcompressor.modifiers.quantization import GPTQModifier

    return [GPTQModifier(config_groups=_w4a16_groups(False), ignore=["lm_head"])]


def _w4a16_rtn_modifiers() -> list:
    """Round-to-nearest asymmetric 4-bit groups (data-free: minutes, where GPTQ takes hours
    on SmolLM2 on the busy 2-core machine)."""
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(config_groups=_w4a16_groups(False), ignore=["lm_head"])]


def _w4a16_awq_modifiers() -> list:
    """AWQ: scale salient input channels (smoothing into the previous layer), then asymmetric
    round-to-nearest 4-bit groups.

    llm-compressor infers Llama's mappings: input_layernorm -> q/k/v, post_attention_layernorm
    -> gate/up, up_proj -> down_proj, each scale chosen by a 20-point grid on the block's output
    error. The fourth, v_proj -> o_proj, is skipped on SmolLM2 ("30 mappings were skipped"):
    with 3 KV heads of 64 v_proj writes 192 channels while o_proj reads 576. SmolLM2 took 46 min
    on the busy 2-core machine (64 windows)."""
    import torch
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.cuda.is_available():
        # llm-compressor 0.14's AWQ pins cached activations for fast copies to a GPU, and
        # pinning fails without one; on a CPU-only machine there is nothing to copy to.
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    return [
        AWQModifier(),
        QuantizationModifier(config_groups=_w4a16_groups(False), ignore=["lm_head"]),
    ]


@dataclass(frozen=True)
class Recipe:
    modifiers: Callable[[], list]
    calibrate: bool  # GPTQ/SmoothQuant/AWQ look at activations; RTN recipes are data-free
    description: str
    samples: int = CALIBRATION_SAMPLES  # calibration windows of CALIBRATION_TOKENS tokens


RECIPES: dict[str, Recipe] = {
    "w8a8-int8": Recipe(
        _w8a8_int8_modifiers, True, "SmoothQuant + GPTQ, int8 per-channel weights, int8 tokens"
    ),
    "w8a8-int8-rtn": Recipe(
        _w8a8_int8_rtn_modifiers,
        True,
        "SmoothQuant + round-to-nearest, int8 per-channel weights, int8 tokens",
        samples=16,
    ),
    "fp8-dynamic": Recipe(
        _fp8_dynamic_modifiers, False, "FP8_DYNAMIC: fp8 per-channel weights, fp8 tokens"
    ),
    "fp8-tensor": Recipe(
        _fp8_tensor_modifiers, False, "fp8 per-tensor weights (a scale per q/k/v), fp8 tokens"
    ),
    "w4a16-gptq": Recipe(
        _w4a16_gptq_modifiers, True, "GPTQ W4A16: symmetric int4 weights, groups of 64"
    ),
    "w4a16-gptq-asym": Recipe(
        _w4a16_gptq_asym_modifiers,
        True,
        "GPTQ W4A16_ASYM: int4 weights + zero points, groups of 64",
    ),
    "w4a16-rtn": Recipe(
        _w4a16_rtn_modifiers, False, "round-to-nearest int4 weights + zero points, groups of 64"
    ),
    "w4a16-awq": Recipe(
        _w4a16_awq_modifiers, True, "AWQ + int4 weights with zero points, groups of 64"
    ),
}


# ---- the float source models (run in .venv) ----------------------------------------------------


def source_model(model: str) -> Path:
    """An HF safetensors directory of the float model the recipes start from (cached)."""
    out = cache_root() / "quantized" / "_source" / model
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if model == "smollm2":
        _save_smollm2(tmp)
    elif model == "tiny":
        _save_tiny_llama(tmp)
    else:
        raise ValueError(f"model must be one of {list(MODELS)}; got {model!r}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _save_smollm2(path: Path) -> None:
    """SmolLM2 dequantized from the shipped GGUF by transformers, saved as float32 safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vllm_mini.transformers_utils.default_model import find_default_gguf, prepare_default_model

    gguf = find_default_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers refuses to save a model it loaded "quantized with gguf": copy the dequantized
    # weights into a plain model built from the same config, minus the GGUF's quantization_config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(path, safe_serialization=True)  # tied: no lm_head.weight is written
    AutoTokenizer.from_pretrained(prepare_default_model()).save_pretrained(path)


def _save_tiny_llama(path: Path) -> None:
    """A 2-layer random Llama whose sizes are multiples of 128 (group-quantization recipes)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    # Byte-ish word-level vocabulary: enough for the tool to tokenize calibration text.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 512)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(path)


# ---- the tool venv -----------------------------------------------------------------------------


def build_tool_venv(venv: Path, packages: list[str], what: str) -> Path:
    """A venv holding `packages` next to the pinned torch, built once; returns its python.

    torch goes in first, so pip keeps the pinned CPU build; a stamp of the package list makes a
    changed list rebuild the venv.
    """
    python = venv / "bin" / "python"
    stamp = venv / ".vllm_mini_installed"
    wanted = " ".join([TORCH_PIN, *packages])
    if stamp.exists() and stamp.read_text() == wanted:
        return python
    start = time.perf_counter()
    print(f"building the {what} venv in {venv} (a few minutes) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, TORCH_PIN], check=True)
    subprocess.run([*pip, *packages], check=True)
    check = "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
    subprocess.run([str(python), "-c", check], check=True)
    stamp.write_text(wanted)
    print(f"{what} venv ready in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return python


def ensure_tool_venv() -> Path:
    """The llm-compressor venv's python, built on first use."""
    return build_tool_venv(tool_venv(), TOOL_PACKAGES, "llm-compressor")


def quantized_checkpoint(recipe: str, model: str = "smollm2") -> Path:
    """The checkpoint `recipe` makes from `model`, produced on first use (cached)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {list(RECIPES)}; got {recipe!r}")
    out = _output_dir(recipe, model)
    if (out / STAMP).exists():
        return out
    with _locked(f".{out.name}.lock"):  # a second session waits for this checkpoint, not others
        return _produce(recipe, model)


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """An exclusive file lock under the cache (parallel test sessions, other engineers)."""
    path = cache_root() / "quantized" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _output_dir(recipe: str, model: str) -> Path:
    return cache_root() / "quantized" / (recipe if model == "smollm2" else f"{recipe}-{model}")


def _produce(recipe: str, model: str) -> Path:
    out = _output_dir(recipe, model)
    name = out.name
    stamp = out / STAMP
    if stamp.exists():
        return out
    with _locked(".setup.lock"):  # the source models and the venv are shared by every recipe
        src = source_model(model)
        python = ensure_tool_venv()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    cmd = [str(python), __file__, recipe, "--inside", "--src", str(src), "--out", str(tmp)]
    subprocess.run(cmd, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    seconds = time.perf_counter() - start
    info = json.loads((tmp / STAMP).read_text())
    info["seconds"] = round(seconds, 1)
    (tmp / STAMP).write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"{name}: produced in {seconds:.0f} s", file=sys.stderr)
    return out


# ---- inside the tool venv ----------------------------------------------------------------------


def _calibration_dataset(tokenizer, samples: int, tokens: int):
    """`samples` windows of `tokens` token ids cut from Python's help topics (English prose)."""
    from pydoc_data.topics import topics

    from datasets import Dataset

    text = "\n\n".join(topics[key] for key in sorted(topics))
    ids = tokenizer(text)["input_ids"]
    if ids.count(tokenizer.unk_token_id) > len(ids) // 2:
        # The tiny model's made-up vocabulary knows no English: hash each word to an id instead.
        vocab = tokenizer.vocab_size
        ids = [3 + zlib.crc32(word.encode()) % (vocab - 3) for word in text.split()]
    if len(ids) < samples * tokens:
        raise RuntimeError(f"calibration text has {len(ids)} tokens, need {samples * tokens}")
    step = len(ids) // samples  # spread the windows over the whole text
    rows = [ids[i * step : i * step + tokens] for i in range(samples)]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * tokens] * samples})


def _run_inside(recipe_name: str, src: Path, out: Path) -> None:
    import compressed_tensors
    import llmcompressor
    import torch
    import transformers
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = RECIPES[recipe_name]
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src)
    kwargs = {}
    if recipe.calibrate:
        kwargs = dict(
            dataset=_calibration_dataset(tokenizer, recipe.samples, CALIBRATION_TOKENS),
            num_calibration_samples=recipe.samples,
            max_seq_length=CALIBRATION_TOKENS,
        )
    oneshot(model=model, recipe=recipe.modifiers(), **kwargs)
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    versions = {
        "torch": torch.__version__,
        "llmcompressor": llmcompressor.__version__,
        "compressed-tensors": compressed_tensors.__version__,
        "transformers": transformers.__version__,
    }
    info = {"recipe": recipe_name, "description": recipe.description, "versions": versions}
    if recipe.calibrate:
        info["calibration"] = f"{recipe.samples} x {CALIBRATION_TOKENS} tokens of pydoc topics"
    (out / STAMP).write_text(json.dumps(info, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", nargs="?", choices=list(RECIPES))
    parser.add_argument("--model", default="smollm2", choices=list(MODELS))
    parser.add_argument("--list", action="store_true", help="list the recipes")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.list or args.recipe is None:
        for name, recipe in RECIPES.items():
            print(f"{name:14s} {recipe.description}")
        return
    if args.inside:
        _run_inside(args.recipe, args.src, args.out)
        return
    print(quantized_checkpoint(args.recipe, args.model))


if __name__ == "__main__":
    main()
