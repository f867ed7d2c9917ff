"""One engine, timed on the shared workload: what each subprocess of compare.py runs, in its own venv.

Benchmark tooling (no stage). Every engine gets the same seeded workload (a JSON file written by
compare.py from common.random_workload) and is timed the same way: wall time of one generate
call over all requests (throughput) or over one request (batch-1 decode: output tokens / time,
the prompt's prefill included, as in latency.py), after a short warm-up outside the timer, greedy
and ignore_eos so every engine produces exactly the requested number of tokens. The module must
import under each peer's python (no vllm_mini there), so engine imports stay inside functions.
One process serves every mode asked (loading a model costs minutes on a busy machine). Prints one
JSON line: {mode: {"tok_s": median, "runs": [...], "tokens": n, "load": 1-min load average}}.

    <python> benchmarks/bench_engines.py ENGINE --workload W.json [--modes throughput,batch1] \
        [--dtype float32|bfloat16|auto] [--model PATH] [--hf-batch-size 16] [--repeats 1,3] \
        [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# A runner takes (prompts, out_lens) and returns (seconds, output tokens produced) for one pass.
Runner = Callable[[list[list[int]], list[int]], tuple[float, int]]


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - start, tokens


def make_vllm_mini(args: argparse.Namespace) -> Runner:
    from vllm_mini import LLM, SamplingParams

    kwargs = {} if args.dtype == "auto" else {"dtype": args.dtype}
    llm = LLM(args.model, **kwargs)
    llm.generate([{"prompt_token_ids": [100] * 16}], SamplingParams(max_tokens=4), use_tqdm=False)

    def run(prompts, out_lens):
        params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in out_lens]
        inputs = [{"prompt_token_ids": p} for p in prompts]
        return _timed(
            lambda: sum(
                len(o.outputs[0].token_ids) for o in llm.generate(inputs, params, use_tqdm=False)
            )
        )

    return run


def make_vllm(args: argparse.Namespace) -> Runner:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    dtype = "float32" if args.dtype == "auto" else args.dtype
    llm = LLM(model=args.model, dtype=dtype, max_model_len=2048, seed=0)
    llm.generate([TokensPrompt(prompt_token_ids=[100] * 16)], SamplingParams(max_tokens=4))

    def run(prompts, out_lens):
        params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in out_lens]
        inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        return _timed(
            lambda: sum(
                len(o.outputs[0].token_ids) for o in llm.generate(inputs, params, use_tqdm=False)
            )
        )

    return run


def make_hf(args: argparse.Namespace) -> Runner:
    """HF generate: static batches, left-padded; a batch runs until its longest request ends, so
    only each request's own output tokens count (as in throughput.py)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import load_hf_peer

    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model = load_hf_peer(None, dtype)
    model.generation_config.eos_token_id = None  # ignore_eos: never stop early
    bs = args.hf_batch_size

    @torch.inference_mode()
    def generate(prompts, out_lens) -> int:
        for b in range(0, len(prompts), bs):
            batch, lens = prompts[b : b + bs], out_lens[b : b + bs]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max(lens),
                do_sample=False,
                pad_token_id=0,
            )
        return sum(out_lens)

    generate([[100] * 16], [4])
    return lambda prompts, out_lens: _timed(lambda: generate(prompts, out_lens))


def make_llamacpp(args: argparse.Namespace) -> Runner:
    """llama-cpp-python's Llama holds one sequence: requests run one after another. Its low-level
    `generate` never stops at EOS (that check lives in create_completion): ignore_eos for free."""
    from llama_cpp import Llama

    threads = args.threads or os.cpu_count() or 1
    llm = Llama(
        model_path=args.model, n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False
    )

    def one(prompt: list[int], n: int) -> int:
        produced = 0
        llm.reset()
        for _ in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            produced += 1
            if produced == n:
                break
        return produced

    one([100] * 16, 4)
    return lambda prompts, out_lens: _timed(
        lambda: sum(one(p, n) for p, n in zip(prompts, out_lens))
    )


ENGINES = {"vllm_mini": make_vllm_mini, "vllm": make_vllm, "hf": make_hf, "llamacpp": make_llamacpp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", choices=sorted(ENGINES))
    parser.add_argument("--workload", required=True, help="JSON written by compare.py")
    parser.add_argument("--modes", default="throughput,batch1", help="comma list")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--model", default=None, help="GGUF or HF dir (default: the engine's)")
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--repeats", default="1,3", help="runs per mode, comma list")
    parser.add_argument("--threads", type=int, default=0, help="0: every core")
    args = parser.parse_args()
    if args.threads and args.engine in ("vllm_mini", "hf"):
        import torch

        torch.set_num_threads(args.threads)  # vLLM takes its threads from VLLM_CPU_OMP_* (peers.py)

    workload = json.loads(Path(args.workload).read_text())
    run = ENGINES[args.engine](args)  # loaded once, timed for every mode asked
    records = {}
    for mode, repeats in zip(args.modes.split(","), args.repeats.split(",")):
        work = workload[mode]
        runs = [run(work["prompts"], work["out_lens"]) for _ in range(int(repeats))]
        rates = [tokens / seconds for seconds, tokens in runs]
        records[mode] = {"tok_s": statistics.median(rates), "runs": rates, "tokens": runs[0][1]}
        records[mode]["load"] = os.getloadavg()[0]  # the machine is shared: how busy it was
    print(json.dumps(records), flush=True)


if __name__ == "__main__":
    main()
