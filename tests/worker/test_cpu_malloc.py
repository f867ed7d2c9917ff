"""tune_malloc (platforms/cpu.py): activation-sized blocks come from the heap and stay there.

Each case runs in a fresh interpreter, since the thresholds are process-wide. glibc's
mallinfo2() counts the blocks currently served by mmap (`hblks`): a 32 MB tensor is one of them
by default and none once tuned. The CPU worker applies it at start-up.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json, sys
import torch
from vllm_mini.platforms.cpu import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = tune_malloc() if sys.argv[1] == "tune" else False
before = libc.mallinfo2().hblks
t = torch.empty(8 << 20, dtype=torch.float32)  # 32 MB, a prefill step's gate_up output
t.fill_(1.0)
during = libc.mallinfo2().hblks
print(json.dumps({"applied": applied, "mmapped_blocks_added": during - before,
                  "again": tune_malloc() if applied else None}))
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


glibc = pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc >= 2.33 (mallinfo2)"
)


@glibc
def test_large_activation_comes_from_heap_once_tuned():
    untuned = _probe("plain")
    assert untuned["mmapped_blocks_added"] == 1  # glibc's default: its own mmap, unmapped on free
    tuned = _probe("tune")
    assert tuned["applied"] is True and tuned["again"] is True
    assert tuned["mmapped_blocks_added"] == 0


@glibc
def test_switch_turns_it_off():
    off = _probe("tune", VLLM_MINI_CPU_MALLOC_TUNING="0")
    assert off["applied"] is False and off["mmapped_blocks_added"] == 1
