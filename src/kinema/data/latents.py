"""Latent datasets: a dataset's clips encoded once by a frozen autoencoder and cached on disk.

Latent diffusion (Rombach et al. 2022; Video LDM, Blattmann et al. 2023, section 3) trains on the
latents of a frozen autoencoder, so the encoder's output for a clip never changes: ``kinema encode``
(:mod:`kinema.pipelines.encode`) computes it once and ``data.dataset=latents data.path=DIR`` trains from
the cache without running the encoder.

**Layout** of a cache directory::

    index.json                 written last, when every shard is complete (see below)
    shard-00000.safetensors    "latents": float32 [n, C', F', H', W'], clips [0, n); metadata: the plan,
    shard-00001.safetensors    the clips' other item keys (captions, labels) as JSON, float64 sum / sum of
    ...                        squares / count of the latents (for the mean / std)

The latents are stored **scaled**: ``autoencoder latents x scale_factor``, exactly what
:meth:`kinema.spaces.LatentSpace.encode` gives and the diffusion model trains on (so reading a clip back
costs nothing and equals encoding it). The scale factor is recorded in the index (divide by it to get
the autoencoder's own latents).

``index.json`` (:data:`FORMAT`, :data:`VERSION`): the autoencoder (``source`` path and ``sha256``; a model
whose autoencoder hashes differently refuses the cache), ``scale_factor``, ``latent_shape`` and
``pixel_shape`` (``[C, F, H, W]`` of one clip), ``num_clips``, ``shard_size``, ``shards`` (file and clip
count each), ``keys`` (the other item keys and their JSON types, e.g. ``{"caption": "str"}``), ``stats``
(mean and std of all latent elements) and ``data`` (the data config the clips came from).

**Resumable**: shard ``i`` holds clips ``[i * shard_size, (i + 1) * shard_size)``, encoded in batches that
start at the shard's first clip, and is written to a temporary file that is renamed into place, so a
shard file is either complete or absent. An interrupted encode, run again with the same arguments, keeps
every complete shard of the same plan and encodes the missing ones; the result is bitwise the cache an
uninterrupted run writes.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset

FORMAT = "kinema-latents"
VERSION = 1
INDEX = "index.json"
LATENTS = "latents"  # the item / batch key of cached latents (a data item holds "video" pixels instead)
TMP_PREFIX = ".tmp-"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def shard_ranges(num_clips: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` clip ranges of the shards: ``shard_size`` clips each, the last one shorter."""
    if num_clips < 1 or shard_size < 1:
        raise ValueError(f"a latent cache needs num_clips >= 1 and shard_size >= 1, got {num_clips}, {shard_size}")
    return [(s, min(s + shard_size, num_clips)) for s in range(0, num_clips, shard_size)]


@dataclass(frozen=True)
class CachePlan:
    """What a cache is: every shard records it, and a resumed encode keeps only shards of the same plan."""

    autoencoder: dict  # {"source": path, "sha256": hash}
    scale_factor: float
    latent_shape: tuple[int, ...]  # [C', F', H', W'] of one clip
    pixel_shape: tuple[int, ...]  # [C, F, H, W] of one clip
    num_clips: int
    shard_size: int
    data: dict  # the data config the clips came from

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# ---- values of the other item keys (captions, labels) -------------------------------------------------


def plain(value: Any, key: str) -> Any:
    """An item value as JSON (tensors and numpy values as numbers / lists), or a ValueError naming ``key``."""
    if hasattr(value, "tolist"):  # tensors, numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v, key) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ValueError(f"the latent cache stores item key {key!r} as JSON, but its value is a {type(value).__name__}")


def item_extras(item: dict) -> dict:
    """The keys of a data item besides its video, as JSON values (captions, class ids, ...)."""
    return {k: plain(v, k) for k, v in item.items() if k != "video"}


def key_types(extras: dict) -> dict[str, str]:
    return {k: type(v).__name__ for k, v in extras.items()}


# ---- shards -------------------------------------------------------------------------------------------


def write_shard(root: Path, index: int, latents: Tensor, extras: list[dict], plan: CachePlan) -> Path:
    """Shard ``index`` (``latents [n, C', F', H', W']``, the clips' ``extras``) written atomically: to a
    temporary file in ``root`` that is renamed into place."""
    z = latents.detach().float().contiguous().cpu()
    z64 = z.double()
    meta = {"plan": plan.key(), "extras": json.dumps(extras), "sum": repr(z64.sum().item()),
            "sumsq": repr(z64.square().sum().item()), "count": str(z.numel())}
    final = root / shard_name(index)
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    save_file({LATENTS: z}, str(tmp), metadata=meta)
    os.replace(tmp, final)
    return final


def shard_metadata(path: Path) -> Optional[dict]:
    """The metadata and latent shape of a shard file (``{"meta": ..., "shape": [...]}``), None when the file is
    missing or unreadable (an incomplete shard)."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            shape = list(f.get_slice(LATENTS).get_shape())
    except Exception:
        return None
    return {"meta": meta, "shape": shape}


def complete_shard(path: Path, plan: CachePlan, clips: int) -> bool:
    """Is ``path`` a complete shard of ``plan`` with ``clips`` clips? A readable shard of another plan is an
    error (the directory holds another cache)."""
    info = shard_metadata(path)
    if info is None:
        return False
    if info["meta"].get("plan") != plan.key():
        raise ValueError(f"{path} belongs to another latent cache (another autoencoder, data or shard size); "
                         f"write this one to another --out")
    return info["shape"] == [clips, *plan.latent_shape]


def remove_temporaries(root: Path) -> list[Path]:
    """Delete the temporary shard files an interrupted encode left in ``root``; returns them."""
    stale = sorted(root.glob(f"{TMP_PREFIX}shard-*"))
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def finish_index(root: Path, plan: CachePlan) -> dict:
    """Write ``index.json`` (atomically) once every shard of ``plan`` is complete; returns it. The mean / std
    come from the shards' float64 sums."""
    ranges = shard_ranges(plan.num_clips, plan.shard_size)
    total = total_sq = 0.0
    count, shards, keys = 0, [], {}
    for i, (start, end) in enumerate(ranges):
        meta = shard_metadata(root / shard_name(i))["meta"]
        total, total_sq, count = total + float(meta["sum"]), total_sq + float(meta["sumsq"]), count + int(meta["count"])
        extras = json.loads(meta["extras"])
        keys.update(key_types(extras[0]) if extras else {})
        shards.append({"file": shard_name(i), "clips": end - start})
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    index = {"format": FORMAT, "version": VERSION, "autoencoder": plan.autoencoder, "scaled": True,
             "scale_factor": plan.scale_factor, "latent_shape": list(plan.latent_shape),
             "pixel_shape": list(plan.pixel_shape), "num_clips": plan.num_clips, "shard_size": plan.shard_size,
             "shards": shards, "keys": keys, "stats": {"mean": mean, "std": std}, "data": plan.data}
    tmp = root / f"{TMP_PREFIX}{INDEX}-{os.getpid()}"
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, root / INDEX)
    return index


def read_index(root: str | Path, what: str = "data.path") -> dict:
    """The ``index.json`` of a complete cache, or one error saying what ``root`` is instead."""
    p = Path(root).expanduser()
    path = p / INDEX
    if not path.is_file():
        if any(p.glob("shard-*.safetensors")) or any(p.glob(f"{TMP_PREFIX}shard-*")):
            raise ValueError(f"{what}={root}: the latent cache in {p} is incomplete (no {INDEX}); run the same "
                             f"kinema encode command again to finish it")
        raise ValueError(f"{what}={root} is not a latent cache (no {INDEX} in {p}); write one with "
                         f"kinema encode --autoencoder AE --out {root} data.dataset=... data.path=...")
    try:
        index = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{path} is not a kinema latent cache index (format {FORMAT!r})")
    if int(index.get("version", 0)) > VERSION:
        raise ValueError(f"{path} has version {index['version']}, newer than this kinema reads ({VERSION}); "
                         f"upgrade kinema")
    return index


# ---- the dataset ----------------------------------------------------------------------------------------


class LatentDataset(Dataset):
    """The clips of a latent cache (``data.dataset=latents``, ``data.path=DIR``): item ``i`` is
    ``{"latents": float32 [C', F', H', W'] (scaled), **its other keys (caption, labels)}``. Reads one clip at a
    time from its shard (memory-mapped), so a cache larger than memory trains too."""

    def __init__(self, path: str | Path) -> None:
        self.root = Path(path).expanduser()
        self.index = read_index(path)
        missing = [s["file"] for s in self.index["shards"] if not (self.root / s["file"]).is_file()]
        if missing:
            raise ValueError(f"the latent cache {self.root} lacks {len(missing)} shard file(s) its {INDEX} lists "
                             f"(e.g. {missing[0]}); run kinema encode again into it")
        self.starts = [0]
        for shard in self.index["shards"]:
            self.starts.append(self.starts[-1] + int(shard["clips"]))
        self._extras: dict[int, list] = {}

    def __len__(self) -> int:
        return int(self.index["num_clips"])

    def _shard_extras(self, shard: int) -> list[dict]:
        if shard not in self._extras:
            info = shard_metadata(self.root / self.index["shards"][shard]["file"])
            if info is None:
                raise ValueError(f"cannot read {self.root / self.index['shards'][shard]['file']}; re-encode the cache")
            self._extras[shard] = json.loads(info["meta"]["extras"])
        return self._extras[shard]

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        i = int(i) + (n if int(i) < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a latent cache of {n} clips")
        shard = bisect.bisect_right(self.starts, i) - 1
        j = i - self.starts[shard]
        with safe_open(str(self.root / self.index["shards"][shard]["file"]), "pt") as f:
            z = f.get_slice(LATENTS)[j:j + 1][0]
        return {LATENTS: z, **self._shard_extras(shard)[j]}

    def check_fits(self, autoencoder: Optional[tuple[str, Optional[str]]], latent_shape: tuple[int, ...]) -> None:
        """Refuse to train a model on this cache unless its latent space is the cache's: ``autoencoder`` is the
        model's ``(source, sha256)`` (None: a pixel-space model), ``latent_shape`` its z shape ``[C', F', H', W']``."""
        ae, pixel = self.index["autoencoder"], self.index["pixel_shape"]
        if autoencoder is None:
            raise ValueError(f"data.dataset=latents: {self.root} holds latents of the autoencoder {ae['source']}; "
                             f"train a latent model on them: model.space=latent model.autoencoder={ae['source']}")
        source, sha256 = autoencoder
        if sha256 and ae.get("sha256") and sha256 != ae["sha256"]:
            raise ValueError(f"the latent cache {self.root} was written by the autoencoder {ae['source']} (sha256 "
                             f"{ae['sha256'][:12]}...), but the model's autoencoder {source} has sha256 "
                             f"{sha256[:12]}...: another latent space. Set model.autoencoder to the cache's "
                             f"autoencoder or re-encode the data with kinema encode --autoencoder {source}")
        if list(latent_shape) != list(self.index["latent_shape"]):
            raise ValueError(f"the latent cache {self.root} holds clips of {pixel[1]} frames of {pixel[2]}x{pixel[3]} "
                             f"pixels (latents {self.index['latent_shape']}), but the model is configured for latents "
                             f"{list(latent_shape)}; set data.num_frames={pixel[1]} data.size={pixel[2]}")


__all__ = ["CachePlan", "FORMAT", "INDEX", "LATENTS", "LatentDataset", "VERSION", "complete_shard", "finish_index",
           "item_extras", "read_index", "remove_temporaries", "shard_metadata", "shard_name", "shard_ranges",
           "write_shard"]
