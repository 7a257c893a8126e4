"""Joint image-video training (VDM, Ho et al. 2022, section 3).

"We jointly train on video and image data: independent images are appended to each video clip
as extra frames, and temporal attention is masked so that no information flows between them."
:class:`JointImageVideo` builds such items; ``frame_segments`` tells the model which frames
belong together (temporal layers let frame i see frame j only when their segments are equal,
see :class:`kinema.conditioning.Conditioning`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


def image_count(num_frames: int, image_fraction: float) -> int:
    """Images K to append to a ``num_frames`` clip so that images are ``image_fraction`` of the
    item's ``num_frames + K`` frames: ``K = round(fraction * F / (1 - fraction))``.

    ``image_count(16, 0.5) == 16``; ``image_count(16, 0.0) == 0``; ``image_count(16, 0.2) == 4``.
    """
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    try:
        fraction = float(image_fraction)
    except (TypeError, ValueError):
        fraction = math.nan
    if not 0.0 <= fraction < 1.0:  # also rejects NaN
        raise ValueError(f"image_fraction must be in [0, 1) (the share of an item's frames that are images; "
                         f"1 would leave no video), got {image_fraction!r}")
    return int(round(fraction * num_frames / (1.0 - fraction)))


def frame_segments(num_frames: int, num_images: int) -> torch.Tensor:
    """LongTensor ``[num_frames + num_images]``: 0 for the video frames, then 1, 2, ..., K
    (each appended image is its own segment)."""
    return torch.cat([torch.zeros(num_frames, dtype=torch.long), torch.arange(1, num_images + 1)])


def check_joint_conditioning(dataset: Dataset, conditioning_keys) -> None:
    """Raise ValueError when ``dataset`` appends independent images (a :class:`JointImageVideo` with
    ``num_images > 0``) and the model reads per-item conditioning from ``conditioning_keys`` (e.g.
    ``["caption"]`` for a text-conditional model, ``[data.class_key]`` for a class-conditional one)
    that the images are not matched on (``JointImageVideo.match``, ``data.image_match``): an image from
    another clip would be trained under this clip's caption or class (the model conditions every frame
    of an item on one caption)."""
    keys = [k for k in conditioning_keys if k]
    if not (isinstance(dataset, JointImageVideo) and dataset.num_images > 0):
        return
    unmatched = [k for k in keys if k not in dataset.match]
    if unmatched:
        raise ValueError(f"joint image-video training (data.image_fraction > 0) with per-item conditioning on "
                         f"{unmatched}: the {dataset.num_images} appended images per item come from other clips, "
                         f"but the model would apply the clip's {' / '.join(unmatched)} to them. Set "
                         f"data.image_match=[{','.join(keys)}] (images only from clips with the same "
                         f"{' / '.join(keys)}), data.image_fraction=0, or train unconditionally")


def _hashable(value):
    if hasattr(value, "tolist"):  # tensors, numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def item_metadata(dataset: Dataset, index: int) -> dict:
    """Item ``index``'s fields other than ``"video"``: from ``dataset.metadata(index)`` when the dataset
    has it (no pixels decoded: the built-in datasets and folders do), else by loading the item."""
    if callable(getattr(dataset, "metadata", None)):
        return dict(dataset.metadata(index))
    return {k: v for k, v in dataset[index].items() if k != "video"}


def match_values(dataset: Dataset, keys: Sequence[str]) -> list[tuple]:
    """Per item of ``dataset``, the values of ``keys`` (made hashable). Raises ValueError naming the key
    when an item lacks it."""
    values = []
    for i in range(len(dataset)):
        labels = item_metadata(dataset, i)
        missing = [k for k in keys if k not in labels]
        if missing:
            raise ValueError(f"data.image_match={list(keys)}: item {i} has no {missing} (its keys: "
                             f"{sorted(labels) + ['video']})")
        values.append(tuple(_hashable(labels[k]) for k in keys))
    return values


def group_indices(values: Sequence[tuple]) -> dict[tuple, np.ndarray]:
    """The indices (ascending) of each distinct value in ``values``."""
    groups: dict[tuple, list[int]] = {}
    for i, value in enumerate(values):
        groups.setdefault(value, []).append(i)
    return {v: np.asarray(ix, dtype=np.int64) for v, ix in groups.items()}


class JointImageVideo(Dataset):
    """Video clips with ``num_images`` independent images appended as extra frames.

    Item ``i``: the item of ``videos[i]`` with ``"video"`` ``[C, F, H, W]`` replaced by
    ``[C, F + K, H, W]`` (clip first, then the K images) and ``"frame_segments"`` LongTensor
    ``[F + K]`` added (0 for the clip, 1..K for the images). Other keys (caption, metadata)
    are the video item's. The U-Net applies one caption / class to every frame of an item, so a
    text- or class-conditional model may train on these items only when the images share that
    conditioning: ``match`` (``data.image_match``) names item keys, e.g. ``["caption"]`` or
    ``["color_id"]``, and every appended image then comes from an item with the same values of
    those keys. :func:`check_joint_conditioning` (called by the trainer) refuses conditioning on a
    key that is not matched.

    Images come from ``images`` (a dataset of 1-frame items ``[C, 1, H, W]``, e.g.
    :class:`~kinema.data.video_folder.ImageFolder`), or, when ``images`` is None, are single
    random frames of *other* random items of ``videos`` (as the paper does). With ``match`` the
    source's labels are read once at construction (:func:`item_metadata`: no pixels for the built-in
    datasets and folders), and a clip whose values no other source item shares is an error.
    Choices are a function of ``(seed, index, epoch)``; :meth:`set_epoch` forwards to the wrapped
    datasets.
    """

    def __init__(self, videos: Dataset, images: Dataset | None = None, num_images: int = 4, seed: int = 0,
                 match: Sequence[str] = ()) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if len(videos) < 1:
            raise ValueError("JointImageVideo needs a non-empty video dataset")
        if images is not None and len(images) < 1:
            raise ValueError("JointImageVideo: the image dataset is empty")
        if isinstance(match, str):
            match = [match]
        self.videos, self.images, self.num_images, self.seed = videos, images, num_images, seed
        self.match = tuple(match)
        self.epoch = 0
        self._values: list[tuple] = []
        self._groups: dict[tuple, np.ndarray] = {}
        if self.match and num_images > 0:
            self._index_matches()

    def _index_matches(self) -> None:
        self._values = match_values(self.videos, self.match)
        source = self._values if self.images is None else match_values(self.images, self.match)
        self._groups = group_indices(source)
        for i, value in enumerate(self._values):
            group = self._groups.get(value, ())
            if len(group) - int(self.images is None) < 1:  # a clip's own frames do not count
                shown = ", ".join(f"{k}={v!r}" for k, v in zip(self.match, value))
                source = "image" if self.images is not None else "other clip"
                raise ValueError(f"data.image_match={list(self.match)}: item {i} ({shown}) matches no {source}; "
                                 f"matched joint training needs values that repeat across the data")

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for ds in (self.videos, self.images):
            if ds is not None and hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def _image(self, rng: np.random.Generator, index: int) -> torch.Tensor:
        """One independent image ``[C, 1, H, W]``."""
        if self.match:
            group = self._groups[self._values[index]]
            if self.images is not None:
                return self.images[int(group[rng.integers(len(group))])]["video"]
            k = int(rng.integers(len(group) - 1))
            other = int(group[k + int(group[k] >= index)])  # any item of the group but this one (sorted)
        elif self.images is not None:
            return self.images[int(rng.integers(len(self.images)))]["video"]
        else:
            n = len(self.videos)
            other = int(rng.integers(n - 1)) if n > 1 else 0
            other += int(n > 1 and other >= index)  # any item but this one
        clip = self.videos[other]["video"]
        f = int(rng.integers(clip.shape[1]))
        return clip[:, f:f + 1]

    def __getitem__(self, index: int) -> dict:
        index = int(index) + (len(self) if index < 0 else 0)
        item = dict(self.videos[index])
        video = item["video"]  # [C, F, H, W]
        rng = np.random.default_rng([self.seed, index, self.epoch])
        frames = [video]
        for k in range(self.num_images):
            image = self._image(rng, index)
            if image.ndim != 4 or image.shape[1] != 1 or image.shape[0] != video.shape[0] \
                    or image.shape[2:] != video.shape[2:]:
                raise ValueError(f"appended image {k} has shape {tuple(image.shape)}; expected "
                                 f"[{video.shape[0]}, 1, {video.shape[2]}, {video.shape[3]}] to match the video "
                                 f"{tuple(video.shape)}")
            frames.append(image.to(video.dtype))
        item["video"] = torch.cat(frames, dim=1)  # [C, F + K, H, W]
        item["frame_segments"] = frame_segments(video.shape[1], self.num_images)
        return item
