"""``kinema encode``: cache a dataset's clips as latents of a frozen autoencoder (:mod:`kinema.data.latents`).

The autoencoder is ``--autoencoder``: a kinema autoencoder checkpoint / run directory or a local diffusers
``AutoencoderKL`` folder, loaded as the frozen part a latent model would load
(:func:`kinema.system.load_autoencoder`), so the cache records the same path and sha256 that training
checks. Clips come from ``cfg.data`` (``data.dataset`` / ``data.path`` / ``data.num_frames`` /
``data.size`` ...), items ``0 .. N - 1`` at epoch 0, and are encoded through
:class:`~kinema.spaces.LatentSpace` (latents x scale factor): reading the cache back equals
``space.encode`` of the same clips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from tqdm.auto import tqdm

from kinema.config import KinemaConfig, to_dict
from kinema.data.latents import (INDEX, CachePlan, complete_shard, finish_index, item_extras, read_index,
                                 remove_temporaries, shard_name, shard_ranges, write_shard)
from kinema.spaces import LatentSpace
from kinema.system import load_autoencoder, resolve_device


def cache_plan(cfg: KinemaConfig, part, space: LatentSpace, num_clips: int, shard_size: int) -> CachePlan:
    d = cfg.data
    data = {k: v for k, v in to_dict(d).items() if k not in ("num_workers",)}  # what the clips are, not how read
    return CachePlan(autoencoder={"source": part.source, "sha256": part.sha256},
                     scale_factor=float(space.autoencoder.scale_factor), latent_shape=tuple(space.shape()),
                     pixel_shape=(space.autoencoder.in_channels, d.num_frames, d.size, d.size), num_clips=num_clips,
                     shard_size=shard_size, data=data)


def encode_dataset(cfg: KinemaConfig, autoencoder: str, out: str | Path, *, num: Optional[int] = None,
                   shard_size: int = 256, batch_size: int = 8, device: str = "auto", progress: bool = True,
                   report: Callable[[str], None] = print, dataset=None) -> dict:
    """Encode the clips of ``cfg.data`` (or ``dataset``; the first ``num``, default all) with ``autoencoder``
    into a latent cache at ``out``, resuming an interrupted one (see :mod:`kinema.data.latents`); returns the
    index. ``batch_size`` clips go through the encoder at a time (batches never cross a shard)."""
    from kinema.data.factory import build_dataset

    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"--shard-size and --batch-size must be >= 1, got {shard_size}, {batch_size}")
    if cfg.data.dataset == "latents":
        raise ValueError("data.dataset=latents is already a latent cache; kinema encode reads videos (data.dataset="
                         "folder / bouncing_shapes / moving_digits)")
    if cfg.data.image_fraction > 0:
        raise ValueError(f"kinema encode caches clips; data.image_fraction={cfg.data.image_fraction} (joint "
                         f"image-video items) is not supported: set data.image_fraction=0")
    part = load_autoencoder(autoencoder)
    dev = resolve_device(device)
    ae = part.module.to(dev)
    try:
        space = LatentSpace(ae, cfg.data.num_frames, cfg.data.size)
    except ValueError as e:
        raise ValueError(f"data.num_frames={cfg.data.num_frames} / data.size={cfg.data.size} do not fit the "
                         f"autoencoder {part.source}: {e}") from None
    data = dataset if dataset is not None else build_dataset(cfg.data)
    if hasattr(data, "set_epoch"):
        data.set_epoch(0)
    n = len(data) if num is None else min(num, len(data))
    if n < 1:
        raise ValueError(f"nothing to encode: the dataset has {len(data)} items (num={num})")
    plan = cache_plan(cfg, part, space, n, shard_size)
    root = Path(out).expanduser()
    index = read_index(root, "--out") if (root / INDEX).is_file() else None
    if index is not None and (index["autoencoder"], index["num_clips"], index["data"], index["shard_size"]) != \
            (plan.autoencoder, n, plan.data, shard_size):
        raise ValueError(f"--out {root} already holds another latent cache ({index['num_clips']} clips of "
                         f"{index['autoencoder']['source']}); choose another --out")
    root.mkdir(parents=True, exist_ok=True)
    stale = remove_temporaries(root)
    ranges = shard_ranges(n, shard_size)
    todo = [i for i, (a, b) in enumerate(ranges) if not complete_shard(root / shard_name(i), plan, b - a)]
    if index is not None and not todo:
        report(f"{root} already holds this latent cache ({n} clips); nothing to do")
        return index
    done = n - sum(ranges[i][1] - ranges[i][0] for i in todo)
    if done or stale:
        report(f"resuming the latent cache in {root}: {len(ranges) - len(todo)} of {len(ranges)} shards complete"
               f"{f', removed {len(stale)} incomplete temporary file(s)' if stale else ''}")
    bar = tqdm(total=n, initial=done, desc="encode", unit="clip", disable=not progress, dynamic_ncols=True)
    try:
        for i in todo:
            start, end = ranges[i]
            latents, extras = [], []
            for b0, items in zip(range(start, end, batch_size),
                                 _item_batches(data, start, end, batch_size, cfg.data.num_workers)):
                video = torch.stack([_clip(item, j, plan) for j, item in zip(range(b0, end), items)]).to(dev)
                latents.append(space.encode(video).float().cpu())
                extras += [item_extras(item) for item in items]
                bar.update(len(items))
            write_shard(root, i, torch.cat(latents), extras, plan)
    finally:
        bar.close()
    index = finish_index(root, plan)
    stats = index["stats"]
    report(f"encoded {n} clips of {list(plan.pixel_shape)} pixels into {len(ranges)} shard(s) of latents "
           f"{list(plan.latent_shape)} (x scale factor {plan.scale_factor:.6g}) in {root}: mean {stats['mean']:.4f}, "
           f"std {stats['std']:.4f}")
    return index


def _item_batches(data, start: int, end: int, batch_size: int, workers: int) -> Iterator[list[dict]]:
    """Items ``start .. end - 1`` in lists of ``batch_size``, read by ``workers`` processes (``data.num_workers``;
    kinema datasets draw each item from its index, so the items are the same for any number of workers)."""
    if workers == 0:
        for b0 in range(start, end, batch_size):
            yield [data[j] for j in range(b0, min(b0 + batch_size, end))]
        return
    from torch.utils.data import DataLoader, Subset

    from kinema.data.loader import seed_worker

    yield from DataLoader(Subset(data, range(start, end)), batch_size=batch_size, num_workers=workers,
                          collate_fn=list, worker_init_fn=seed_worker)


def _clip(item: dict, index: int, plan: CachePlan) -> torch.Tensor:
    """An item's video ``[C, F, H, W]``, which must have the plan's pixel shape."""
    if "frame_segments" in item:
        raise ValueError("kinema encode caches clips, not joint image-video items (frame_segments); set "
                         "data.image_fraction=0")
    video = item["video"]
    if list(video.shape) != list(plan.pixel_shape):
        raise ValueError(f"item {index} has a video of shape {list(video.shape)}, but the cache holds "
                         f"{list(plan.pixel_shape)} clips (data.num_frames / data.size)")
    return video


__all__ = ["cache_plan", "encode_dataset"]
