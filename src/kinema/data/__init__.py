"""Data: decoding and writing videos, clip sampling, datasets, and the synthetic data that ships
with kinema. Items are dicts ``{"video": float32 [C, F, H, W] in [-1, 1], "caption": str, ...}``;
batches (see :func:`collate`) hold ``"video"`` ``[B, C, F, H, W]``."""

from kinema.data.io import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    WRITE_EXTENSIONS,
    VideoDecodeError,
    VideoInfo,
    from_uint8,
    probe_video,
    read_frames,
    read_grid,
    read_video,
    tile_batch,
    to_uint8,
    write_video,
)
from kinema.data.joint import JointImageVideo, frame_segments, image_count
from kinema.data.loader import batches_per_epoch, collate, infinite_batches, make_loader, shard_indices
from kinema.data.synthetic import BouncingShapes, MovingDigits, load_mnist
from kinema.data.video_folder import ImageFolder, VideoFolder

__all__ = [
    "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "WRITE_EXTENSIONS", "VideoDecodeError", "VideoInfo",
    "from_uint8", "probe_video", "read_frames", "read_grid", "read_video", "tile_batch", "to_uint8", "write_video",
    "JointImageVideo", "frame_segments", "image_count",
    "batches_per_epoch", "collate", "infinite_batches", "make_loader", "shard_indices",
    "BouncingShapes", "MovingDigits", "load_mnist",
    "ImageFolder", "VideoFolder",
]
