"""StructuredOutputRequest: a request's constraint, its compile job, and then its grammar.

Stage 13. Mirrors vllm/v1/structured_output/request.py. A constrained request enters the
scheduler as WAITING_FOR_FSM while its grammar compiles on the manager's thread; the scheduler
polls `grammar_ready` each step and only admits the request once its grammar exists, so a slow
schema delays that one request and never the engine loop. Next: __init__.py (the manager).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from vllm_mini.sampling_params import StructuredOutputsParams
from vllm_mini.structured_output.backend_types import StructuredOutputGrammar, StructuredOutputKey


@dataclass
class StructuredOutputRequest:
    params: StructuredOutputsParams
    key: StructuredOutputKey | None = None
    # The compiled constraint, shared with every request of the same key (set by the manager).
    compiled: Future | None = field(default=None, repr=False)
    # This request's own cursor in it, made once the compile finished.
    grammar: StructuredOutputGrammar | None = field(default=None, repr=False)
    # Why the grammar could not be built (the request then finishes with this error).
    error: str | None = None
