"""What the scheduler decides about each emitted token: stop here? which logprob rows are its?

Stage 5. Mirrors vllm/v1/core/sched/utils.py. `check_stop` applies the stop conditions in vLLM's
order after every appended token (EOS, stop token ids, max_model_len, max_tokens); stop strings
are the detokenizer's business (engine/detokenizer.py), since they need text. Next: scheduler.py.
"""

from __future__ import annotations

from vllm_mini.core.sched.output import LogprobsLists
from vllm_mini.request import Request, RequestStatus


def check_stop(request: Request, max_model_len: int) -> bool:
    """Stop conditions, in vLLM's order (vllm/v1/core/sched/utils.py: check_stop)."""
    params = request.sampling_params
    if request.num_output_tokens >= params.min_tokens:
        last = request.output_token_ids[-1]
        if not params.ignore_eos and last == request.eos_token_id:
            request.status = RequestStatus.FINISHED_STOPPED
            return True
        if last in (params.stop_token_ids or ()):
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = last
            return True
    if request.num_tokens >= max_model_len or request.num_output_tokens >= params.max_tokens:
        request.status = RequestStatus.FINISHED_LENGTH_CAPPED
        return True
    return False


def logprob_rows(logprobs: LogprobsLists | None, index: int, count: int) -> LogprobsLists | None:
    """Request `index`'s logprob rows: its first `count` emitted tokens (a stop cuts the rest)."""
    if logprobs is None:
        return None
    cu = logprobs.cu_num_generated_tokens
    start = index if cu is None else cu[index]
    end = start + count
    return LogprobsLists(
        logprobs.logprob_token_ids[start:end],
        logprobs.logprobs[start:end],
        logprobs.sampled_token_ranks[start:end],
    )
