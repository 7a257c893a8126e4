"""Deterministic data loading: the same batches for the same seed and epoch, whatever the number of
workers, and shards that do not overlap across ranks.

Order: epoch ``e`` visits the permutation ``numpy.random.default_rng([seed, e]).permutation(N)``
(or ``0..N-1`` without shuffling), padded by wrapping around to a multiple of ``world_size``;
rank ``r`` takes every ``world_size``-th index starting at ``r`` (``DistributedSampler``
semantics). Content: kinema datasets draw an item's randomness from ``(seed, index, epoch)``,
never from global RNGs, so a worker process computes exactly what the main process would.
``dataset.set_epoch(e)`` is called (when the dataset has it) before each epoch's workers start.

:func:`infinite_batches` is the trainer's stream: epoch after epoch, and ``start_step=s``
resumes with exactly the batch an uninterrupted run would yield as its ``s``-th (0-based).
"""

from __future__ import annotations

import math
import random
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def shard_indices(num_items: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True, rank: int = 0,
                  world_size: int = 1) -> np.ndarray:
    """Indices rank ``rank`` visits in epoch ``epoch`` -> int64 ``[ceil(N / world_size)]``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if num_items < 1:
        raise ValueError(f"cannot load from an empty dataset (length {num_items})")
    order = np.random.default_rng([seed, epoch]).permutation(num_items) if shuffle else np.arange(num_items)
    total = math.ceil(num_items / world_size) * world_size
    order = np.resize(order, total)  # wrap around so every rank gets the same count
    return order[rank::world_size].astype(np.int64)


class IndexSampler(Sampler[int]):
    """Yields a fixed list of indices (the loader computes it; no hidden state)."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = [int(i) for i in indices]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def collate(items: list) -> dict:
    """Batch a list of item dicts.

    Tensors are stacked (``"video"`` -> ``[B, C, F, H, W]``, ``"frame_segments"`` -> ``[B, F]``);
    ints / bools / floats become tensors ``[B]``; equal-length lists of ints (e.g. ``"digits"``)
    become LongTensors ``[B, n]``; strings and anything else stay Python lists of length B.
    """
    if not items:
        raise ValueError("collate got an empty list")
    first = items[0]
    if not isinstance(first, dict):
        return _collate_values("item", items)
    keys = list(first)
    for n, item in enumerate(items):
        if set(item) != set(keys):
            raise ValueError(f"collate: item {n} has keys {sorted(item)}, item 0 has {sorted(keys)}")
    return {k: _collate_values(k, [item[k] for item in items]) for k in keys}


def _collate_values(key: str, values: list):
    v0 = values[0]
    if isinstance(v0, torch.Tensor):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) != 1:
            raise ValueError(f"collate: {key!r} has different shapes in one batch: {sorted(shapes)}")
        return torch.stack(values)
    if isinstance(v0, np.ndarray) and v0.dtype != object:
        return _collate_values(key, [torch.as_tensor(v) for v in values])
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return torch.tensor(values, dtype=torch.bool)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.long)
    if all(isinstance(v, (float, np.floating)) for v in values):
        return torch.tensor(values, dtype=torch.float32)
    if all(isinstance(v, (list, tuple)) for v in values) and len({len(v) for v in values}) == 1 and all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool) for v in values for x in v):
        return torch.tensor([list(v) for v in values], dtype=torch.long).reshape(len(values), len(v0))
    return list(values)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: one thread per worker, and Python / NumPy global RNGs seeded from the
    worker's torch seed (itself drawn from the loader's seeded generator)."""
    torch.set_num_threads(1)
    s = torch.initial_seed() % 2 ** 32
    random.seed(s)
    np.random.seed(s)


def make_loader(dataset: Dataset, batch_size: int, *, num_workers: int = 0, seed: int = 0, shuffle: bool = True,
                drop_last: bool = True, rank: int = 0, world_size: int = 1, epoch: int = 0, start_batch: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` for one epoch of rank ``rank``'s shard.

    Batches are collated by :func:`collate`. Order and content depend only on ``(seed, epoch,
    rank, world_size)``, not on ``num_workers``. ``start_batch`` skips that many batches of this
    epoch without loading them (for resuming). Calls ``dataset.set_epoch(epoch)`` when present.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    indices = shard_indices(len(dataset), seed=seed, epoch=epoch, shuffle=shuffle, rank=rank,
                            world_size=world_size)[start_batch * batch_size:]
    generator = torch.Generator().manual_seed(int(np.random.default_rng([seed, epoch, rank, 7]).integers(2 ** 62)))
    return DataLoader(dataset, batch_size=batch_size, sampler=IndexSampler(indices), num_workers=num_workers,
                      collate_fn=collate, drop_last=drop_last, pin_memory=pin_memory,
                      worker_init_fn=seed_worker if num_workers > 0 else None, generator=generator,
                      persistent_workers=False)


def batches_per_epoch(num_items: int, batch_size: int, *, world_size: int = 1, drop_last: bool = True) -> int:
    """Batches each rank gets per epoch."""
    per_rank = math.ceil(num_items / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def infinite_batches(dataset: Dataset, batch_size: int, *, num_workers: int = 0, seed: int = 0,
                     shuffle: bool = True, drop_last: bool = True, rank: int = 0, world_size: int = 1,
                     start_step: int = 0, pin_memory: bool = False) -> Iterator[dict]:
    """Yield batches forever, epoch 0, 1, 2, ... (each epoch reshuffled, ``set_epoch`` called).

    ``start_step`` counts batches already consumed (per rank): the stream starts at epoch
    ``start_step // batches_per_epoch`` and skips the first ``start_step % batches_per_epoch``
    batches of it, so a resumed run yields exactly the batches of an uninterrupted one.
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    per_epoch = batches_per_epoch(len(dataset), batch_size, world_size=world_size, drop_last=drop_last)
    if per_epoch == 0:
        raise ValueError(f"dataset of {len(dataset)} items gives rank {rank} of {world_size} "
                         f"{math.ceil(len(dataset) / world_size)} items, fewer than batch_size={batch_size}; "
                         f"lower the batch size or add data")
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        loader = make_loader(dataset, batch_size, num_workers=num_workers, seed=seed, shuffle=shuffle,
                             drop_last=drop_last, rank=rank, world_size=world_size, epoch=epoch,
                             start_batch=offset, pin_memory=pin_memory)
        yield from loader
        epoch, offset = epoch + 1, 0


__all__ = ["make_loader", "infinite_batches", "collate", "shard_indices", "batches_per_epoch", "IndexSampler",
           "seed_worker"]
