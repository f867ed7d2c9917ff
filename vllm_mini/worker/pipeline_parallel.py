"""The model runner's pipeline-parallel part: run this stage, pass activations on, and keep the
persistent batch in step with the stage that samples.

Stage 8. Mirrors the pipeline-parallel branches of vllm/v1/worker/gpu_model_runner.py. Every
stage receives the same SchedulerOutput, so each already knows the step's shape: stage s waits for
`[num_tokens, hidden]` hidden states and residual from stage s-1, runs its layers and sends its
own to stage s+1. Only the last stage has the final hidden states, so only it computes logits and
samples; it then broadcasts the sampled token ids to the earlier stages, which append them to
their input batches (each stage keeps its own copy of every request's tokens).

The schedule is the simple one: the engine core sends one step and waits for its result, so with
two stages each process idles half the time (the pipeline bubble). vLLM keeps up to
pipeline_parallel_size batches in flight to fill it; see docs/stages/08_distributed.md.
ModelRunner mixes this in. Next: executor/multiproc_executor.py.
"""

from __future__ import annotations

import torch

from vllm_mini.core.sched.output import ModelRunnerOutput
from vllm_mini.distributed import get_pp_group
from vllm_mini.model_executor.models.utils import IntermediateTensors


class PipelineParallelMixin:
    """Needs the runner's model, model_config, device and input_batch."""

    def _forward_stage(
        self, input_ids: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor | IntermediateTensors:
        """This stage's layers; called inside the forward context."""
        pp = get_pp_group()
        if pp.world_size == 1:
            return self.model(input_ids, positions)
        intermediate = None
        if not pp.is_first_rank:
            shape = (input_ids.shape[0], self.model_config.hf_text_config.hidden_size)
            hidden, residual = pp.recv([shape, shape], self.model_config.dtype, self.device)
            intermediate = IntermediateTensors(hidden, residual)
        out = self.model(input_ids, positions, intermediate)
        if not pp.is_last_rank:
            pp.send([out.hidden_states, out.residual])
        return out

    def _follow_last_stage(self, req_ids: list[str]) -> ModelRunnerOutput:
        """An earlier stage: take the tokens the last stage sampled, as if it had sampled them."""
        pp = get_pp_group()
        sampled: list[list[int]] = pp.broadcast_object(None, src_in_group=pp.world_size - 1)
        for row, tokens in enumerate(sampled):
            for token in tokens:
                self.input_batch.append_token(row, token)
        return ModelRunnerOutput(req_ids, dict(self.input_batch.req_id_to_index), sampled)

    def _share_sampled(self, sampled: list[list[int]]) -> None:
        """The last stage: send this step's sampled tokens to every earlier stage."""
        pp = get_pp_group()
        if pp.world_size > 1:
            pp.broadcast_object(sampled, src_in_group=pp.world_size - 1)
