"""Distributed helpers that also work without distribution (DESIGN.md section 5, habit 8).

With one process (no ``torchrun``), ``rank()`` is 0, ``world_size()`` is 1, ``print0`` prints and
``barrier`` does nothing, so the same code path runs on one CPU in tests.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    """print on rank 0 only."""
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device_type: str) -> bool:
    """Initialize the default process group when launched by torchrun (NCCL on CUDA, gloo on CPU).

    Returns True when a process group is (now) active.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return True


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity with one process)."""
    if not is_initialized():
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()
