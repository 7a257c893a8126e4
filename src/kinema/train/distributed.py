"""Distributed helpers that also work without distribution (DESIGN.md section 5, habit 8).

With one process (no ``torchrun``), ``rank()`` is 0, ``world_size()`` is 1, ``print0`` prints and
``barrier`` does nothing, so the same code path runs on one CPU in tests. Under ``torchrun`` the
trainer wraps the model with :func:`wrap_for_parallel` (DDP, or FSDP2 for models whose weights and
optimizer state should be sharded) and draws its noise for the global batch, keeping this rank's
rows (:func:`local_slice`), so N processes train exactly like one process with the same global
batch.
"""

from __future__ import annotations

import os
from typing import Optional

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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a local process group's rendezvous)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_worker(local: int, fn, args: tuple, world: int, port: int, threads: int, results) -> None:
    """One process of :func:`spawn_local`: the environment torchrun would give it, then ``fn(*args)``."""
    os.environ.update({"RANK": str(local), "LOCAL_RANK": str(local), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "OMP_NUM_THREADS": str(threads)})
    torch.set_num_threads(threads)
    try:
        out = fn(*args)
        if local == 0:
            results.put(out)
    finally:
        if is_initialized():
            dist.destroy_process_group()


def spawn_local(fn, nprocs: int, args: tuple = (), *, threads: Optional[int] = None):
    """Run ``fn(*args)`` in ``nprocs`` data-parallel processes on this machine, as ``torchrun --standalone
    --nproc_per_node nprocs`` would (each sees RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, so the trainer
    joins a gloo process group on CPU), and return rank 0's result. ``threads``: intra-op threads per process
    (default: the usable cores shared out, at least 1). With ``nprocs == 1`` it simply calls ``fn(*args)``.

    ``fn`` must be a module-level function (it is pickled for the spawned processes) and its result
    picklable. An exception in any process is raised here, naming the rank, after all have stopped."""
    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    if nprocs == 1:
        return fn(*args)
    if is_initialized():
        raise RuntimeError("spawn_local cannot start processes from inside a process group (use torchrun)")
    import torch.multiprocessing as mp

    threads = threads or max(1, usable_cores() // nprocs)
    results = mp.get_context("spawn").SimpleQueue()
    procs = mp.start_processes(_local_worker, args=(fn, args, nprocs, free_port(), threads, results), nprocs=nprocs,
                               join=False, start_method="spawn")
    out = None
    while True:  # read rank 0's result while waiting: one larger than a pipe's buffer would block its writer
        done = procs.join(timeout=0.5)  # raises, naming the process, if one failed
        if not results.empty():
            out = results.get()
        if done:
            return out


def _all_reduce(value: torch.Tensor, op) -> torch.Tensor:
    """A reduced copy of ``value`` over ranks (``value`` itself with one process)."""
    if not is_initialized():
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=op)
    return out


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity with one process)."""
    return _all_reduce(value, dist.ReduceOp.SUM) / world_size()


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum over ranks (identity with one process)."""
    return _all_reduce(value, dist.ReduceOp.MAX)


def average_gradients(params) -> None:
    """Average the ``.grad`` of ``params`` over ranks in place (for a part not wrapped in DDP / FSDP, e.g. a
    discriminator); nothing with one process. Every rank must call it with the same parameters."""
    if not is_initialized():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world_size())


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` with one process).
    Uses pickle over the process group: only for kinema's own small state (RNG states)."""
    if not is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def local_slice(global_batch: torch.Tensor, rank_: int, world: int) -> torch.Tensor:
    """Rank ``rank_``'s rows ``[rank_::world]`` of a tensor drawn for the whole global batch.

    The loader gives rank r the items at global batch positions r, r + world, r + 2 world, ...
    (:func:`kinema.data.loader.shard_indices`), so slicing random draws the same way pairs every
    item with the noise it would get in a one-process run with the same global batch. The slice
    is copied so the global tensor can be freed."""
    if world == 1:
        return global_batch
    return global_batch[rank_::world].contiguous()


# ---- model wrapping -----------------------------------------------------------------------------

PARALLEL_MODES = ("ddp", "fsdp")


def shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP units of a backbone: every entry of its top-level ``nn.ModuleList`` attributes (the
    U-Net's down / middle / up blocks; a transformer's block list). Each unit's parameters are
    gathered just before it runs and freed after, so peak memory holds one unit's full weights."""
    units = []
    for child in model.children():
        if isinstance(child, torch.nn.ModuleList):
            units.extend(child)
    if not units:  # a wrapper around a backbone (e.g. TextConditioned): the backbone's units
        for child in model.children():
            units.extend(shard_units(child))
    return units


def wrap_for_parallel(model: torch.nn.Module, mode: str, device: torch.device,
                      param_dtype: Optional[torch.dtype] = None) -> torch.nn.Module:
    """``model`` ready for data-parallel training over the default process group.

    - ``ddp``: ``DistributedDataParallel`` (every rank holds all weights and optimizer state;
      gradients are averaged in buckets overlapped with the backward pass). Returns the wrapper;
      ``model`` itself stays the plain module.
    - ``fsdp``: FSDP2, ``torch.distributed.fsdp.fully_shard`` on every :func:`shard_units` entry and
      on the root: parameters, gradients and optimizer state are sharded over ranks (as DTensors),
      gradients reduce-scattered in float32. ``param_dtype`` (bf16 under bf16 training) is the
      dtype the gathered weights are computed in. Shards ``model`` in place and returns it.
    """
    if mode not in PARALLEL_MODES:
        raise ValueError(f"unknown train.parallel {mode!r}; choose one of {', '.join(PARALLEL_MODES)}")
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for unit in shard_units(model):
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a sharded DTensor (a collective: every rank must call it); plain
    tensors are returned as they are."""
    return t.full_tensor() if _is_dtensor(t) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``like``: this rank's shard when ``like`` is a DTensor, else ``full``."""
    if not _is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5: no DTensor, hence no FSDP2
        return False
    return isinstance(t, DTensor)
