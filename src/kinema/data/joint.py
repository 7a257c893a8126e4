"""Joint image-video training (VDM, Ho et al. 2022, section 3).

"We jointly train on video and image data: independent images are appended to each video clip
as extra frames, and temporal attention is masked so that no information flows between them."
:class:`JointImageVideo` builds such items; ``frame_segments`` tells the model which frames
belong together (temporal layers let frame i see frame j only when their segments are equal,
see :class:`kinema.conditioning.Conditioning`).
"""

from __future__ import annotations

import math

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
    ``["caption"]`` for a text-conditional model, ``[data.class_key]`` for a class-conditional one):
    the appended images come from other clips, so the item's caption or class would be wrong for
    them (VDM conditions every frame of an item on one caption)."""
    keys = [k for k in conditioning_keys if k]
    if isinstance(dataset, JointImageVideo) and dataset.num_images > 0 and keys:
        raise ValueError(f"joint image-video training (data.image_fraction > 0) cannot be combined with per-item "
                         f"conditioning on {keys}: the {dataset.num_images} appended images per item come from "
                         f"other clips, but the model would apply the clip's {' / '.join(keys)} to them. Use "
                         f"data.image_fraction=0 for text- or class-conditional models, or train unconditionally")


class JointImageVideo(Dataset):
    """Video clips with ``num_images`` independent images appended as extra frames.

    Item ``i``: the item of ``videos[i]`` with ``"video"`` ``[C, F, H, W]`` replaced by
    ``[C, F + K, H, W]`` (clip first, then the K images) and ``"frame_segments"`` LongTensor
    ``[F + K]`` added (0 for the clip, 1..K for the images). Other keys (caption, metadata)
    are the video item's, so they describe the clip and *not* the appended images: the U-Net
    applies one caption / class to every frame, hence training a text- or class-conditional model
    on these items would teach it images under another item's caption. :func:`check_joint_conditioning`
    refuses that combination (the trainer calls it); joint training is for unconditional models
    until per-frame conditioning exists.

    Images come from ``images`` (a dataset of 1-frame items ``[C, 1, H, W]``, e.g.
    :class:`~kinema.data.video_folder.ImageFolder`), or, when ``images`` is None, are single
    random frames of *other* random items of ``videos`` (as the paper does). Choices are a
    function of ``(seed, index, epoch)``; :meth:`set_epoch` forwards to the wrapped datasets.
    """

    def __init__(self, videos: Dataset, images: Dataset | None = None, num_images: int = 4, seed: int = 0) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if len(videos) < 1:
            raise ValueError("JointImageVideo needs a non-empty video dataset")
        if images is not None and len(images) < 1:
            raise ValueError("JointImageVideo: the image dataset is empty")
        self.videos, self.images, self.num_images, self.seed = videos, images, num_images, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for ds in (self.videos, self.images):
            if ds is not None and hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def _image(self, rng: np.random.Generator, index: int) -> torch.Tensor:
        """One independent image ``[C, 1, H, W]``."""
        if self.images is not None:
            return self.images[int(rng.integers(len(self.images)))]["video"]
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
