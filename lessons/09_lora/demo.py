"""Lesson 09 demo: train two LoRA adapters with PEFT, serve them beside the base model in ONE batch.

    .venv/bin/python lessons/09_lora/demo.py

A tiny random Llama (tests/conftest.py's make_tiny_checkpoint, with a word-level tokenizer whose
tokens are "w3", "w4", ...) knows nothing, so whatever an adapter teaches it is easy to see:
- adapter "sevens" learns to answer "w40 w41 w42" with w7 w7 w7 ...;
- adapter "count" learns to answer the same prompt by counting on: w43 w44 w45 ...
Both are trained with PEFT for a few dozen steps (a second or two each on a CPU) and saved as
PEFT saves them. Then one vllm_mini engine, with enable_lora=True, serves a batch of six requests:
the same prompt with no adapter, "sevens" and "count", and a second prompt likewise. Every
request's output is compared with PEFT's own generate() with the same adapter.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from tests.conftest import make_tiny_checkpoint  # noqa: E402
from vllm_mini import LLM, SamplingParams  # noqa: E402
from vllm_mini.lora.request import LoRARequest  # noqa: E402

PROMPT = [40, 41, 42]  # "w40 w41 w42"
OTHER = [100, 101, 102, 103]  # a prompt neither adapter was trained on
MAX_TOKENS = 8
TEACH = {
    "sevens": [7] * 10,  # the same token again and again
    "count": list(range(43, 53)),  # the prompt continued: 43, 44, ...
}


def words(ids: list[int]) -> str:
    return " ".join(f"w{i}" for i in ids)


def train_adapter(base: Path, out: Path, target: list[int], steps: int = 40) -> Path:
    """Fine-tune a rank-8 LoRA on one sequence (prompt + target) and save it the PEFT way."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    ids = torch.tensor([PROMPT + target])
    trainable = [p for p in model.parameters() if p.requires_grad]  # only the A and B matrices
    optimizer = torch.optim.AdamW(trainable, lr=3e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)  # adapter_config.json + adapter_model.safetensors
    return out


def peft_generate(base: Path, adapter: Path | None, prompt: list[int]) -> list[int]:
    """The reference: HF transformers + PEFT, greedy, one request at a time."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.inference_mode():
        out = model.eval().generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def record_token_slots(punica) -> list:
    """Wrap the PunicaWrapper's update_metadata to record each step's token -> slot mapping."""
    steps = []
    update = punica.update_metadata

    def recording(token_slots, query_start_loc, max_query_len, *slots_and_rank):
        update(token_slots, query_start_loc, max_query_len, *slots_and_rank)
        if max_query_len == 1:  # decode: BGMV reads one slot per token
            steps.append(token_slots.tolist())
        else:  # prefill: SGMV reads one slot per request's run of tokens
            steps.append(list(zip(*punica.segments)))

    punica.update_metadata = recording
    return steps


def main() -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # PEFT reloads the base model for every reference
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = make_tiny_checkpoint(root / "base", "llama")
        paths = {}
        for name, target in TEACH.items():
            t = time.perf_counter()
            paths[name] = train_adapter(base, root / name, target)
            print(f"trained {name!r} with PEFT in {time.perf_counter() - t:.1f} s")
        # lora_int_id (1, 2) is the adapter's identity inside the engine; 0 would mean "base".
        loras = {
            name: LoRARequest(name, i + 1, str(p)) for i, (name, p) in enumerate(paths.items())
        }

        llm = LLM(str(base), enable_lora=True, max_loras=2, max_lora_rank=8)
        manager = llm.llm_engine.engine_core.worker.model_runner.lora_manager
        steps = record_token_slots(manager.punica)
        plan = [(p, name) for p in (PROMPT, OTHER) for name in (None, "sevens", "count")]
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        outs = llm.generate(
            [{"prompt_token_ids": p} for p, _ in plan],
            params,
            lora_request=[loras[name] if name else None for _, name in plan],  # one per prompt
            use_tqdm=False,
        )
        print(f"\none batch of {len(plan)} requests, adapter slots: {manager.slots}")
        print(f"step 1 (prefill, SGMV), (start, length, slot) per request: {steps[0]}")
        print(f"step 2 (decode, BGMV), one slot per token: {steps[1]}\n")
        print(f"{'prompt':<20} {'adapter':<8} {'vllm_mini output':<42} same as PEFT")
        rows = []
        for (prompt, name), out in zip(plan, outs):
            tokens = list(out.outputs[0].token_ids)
            same = tokens == peft_generate(base, paths.get(name), prompt)
            rows.append({"prompt": prompt, "adapter": name, "tokens": tokens, "same": same})
            print(f"{words(prompt):<20} {name or '-':<8} {words(tokens):<42} {same}")
    seconds = time.perf_counter() - t0
    print(f"\nall equal to PEFT: {all(r['same'] for r in rows)}; whole demo {seconds:.1f} s")
    return {"rows": rows, "seconds": seconds, "steps": steps}


if __name__ == "__main__":
    main()
