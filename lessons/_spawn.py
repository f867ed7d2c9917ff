"""Run one function of a lesson file on several processes joined by torch.distributed (gloo).

Lesson 08 shards an MLP by hand across two processes. A spawned process cannot import a lesson
file by module name (lesson directories start with a digit), so each process loads the file by
path, as _impl.py does, joins the gloo group, calls the function with its rank and returns what
it returned. Used by lessons/08_distributed/ (tests and demo).
"""

from __future__ import annotations

import socket
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def run_on_ranks(file: str, fn_name: str, world_size: int, *args: Any) -> list[Any]:
    """[fn(rank, world_size, *args) for each rank], each rank in its own process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        init_method = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_rank_main, args=(file, fn_name, rank, world_size, init_method, args, queue)
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    errors = [r for r in results.values() if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return [results[rank] for rank in range(world_size)]


def _rank_main(file, fn_name, rank, world_size, init_method, args, queue) -> None:
    import os

    import torch

    from lessons._impl import load_impl

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
        fn = getattr(load_impl(file, os.path.splitext(os.path.basename(file))[0]), fn_name)
        queue.put((rank, fn(rank, world_size, *args)))
    except BaseException as e:  # noqa: BLE001 - handed back to the parent, which raises it
        queue.put((rank, RuntimeError(f"rank {rank}: {type(e).__name__}: {e}")))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
