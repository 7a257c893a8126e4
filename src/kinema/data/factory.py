"""Build the dataset a :class:`kinema.config.DataConfig` describes."""

from __future__ import annotations

from torch.utils.data import Dataset

DATASETS = ("bouncing_shapes", "moving_digits", "folder", "latents")


def build_dataset(cfg) -> Dataset:
    """``cfg`` is a DataConfig. Returns a map-style dataset of ``{"video": [C, F, H, W], ...}``
    items; with ``image_fraction > 0`` independent images are appended for joint training."""
    from kinema.data.synthetic import BouncingShapes, MovingDigits
    from kinema.data.video_folder import ImageFolder, VideoFolder

    if cfg.dataset == "latents":  # a cache written by `kinema encode` (data/latents.py)
        return latent_dataset(cfg)
    synthetic_frames = cfg.num_frames * cfg.frame_stride  # subsampled below (StridedFrames)
    if cfg.dataset == "bouncing_shapes":
        ds = BouncingShapes(num_frames=synthetic_frames, size=cfg.size, length=cfg.length, seed=cfg.seed)
    elif cfg.dataset == "moving_digits":
        ds = MovingDigits(num_frames=synthetic_frames, size=cfg.size, length=cfg.length, seed=cfg.seed,
                          mnist_path=cfg.path)
    elif cfg.dataset == "folder":
        if not cfg.path:
            raise ValueError("data.dataset=folder needs data.path=<folder of videos>")
        ds = VideoFolder(cfg.path, num_frames=cfg.num_frames, size=cfg.size, frame_stride=cfg.frame_stride,
                         fps=cfg.fps, crop=cfg.crop, seed=cfg.seed)
    else:
        raise ValueError(f"unknown data.dataset {cfg.dataset!r}; choose one of {DATASETS}")
    if cfg.dataset != "folder" and cfg.frame_stride > 1:
        ds = StridedFrames(ds, cfg.frame_stride)
    if cfg.image_fraction > 0:
        from kinema.data.joint import JointImageVideo, image_count

        images = ImageFolder(cfg.image_path, size=cfg.size, seed=cfg.seed) if cfg.image_path else None
        ds = JointImageVideo(ds, images, num_images=image_count(cfg.num_frames, cfg.image_fraction), seed=cfg.seed,
                             match=cfg.image_match)
    return ds


def latent_dataset(cfg) -> Dataset:
    """The latent cache at ``data.path`` (its clips as they were encoded: no striding, no joint images)."""
    from kinema.data.latents import LatentDataset

    if not cfg.path:
        raise ValueError("data.dataset=latents needs data.path=<a latent cache written by kinema encode>")
    if cfg.image_fraction > 0:
        raise ValueError(f"data.dataset=latents holds clips only; data.image_fraction={cfg.image_fraction} is not "
                         f"supported with it: set data.image_fraction=0")
    return LatentDataset(cfg.path)


class StridedFrames(Dataset):
    """Every ``stride``-th frame of a synthetic dataset's clips (``data.frame_stride``): the clip a base
    model of a cascade sees at the lower frame rate of a temporal super-resolution stage above it."""

    def __init__(self, dataset: Dataset, stride: int) -> None:
        self.dataset, self.stride = dataset, stride

    def __len__(self) -> int:
        return len(self.dataset)

    def metadata(self, index: int) -> dict:
        """The wrapped dataset's item fields other than ``"video"`` (see :func:`kinema.data.joint.item_metadata`)."""
        from kinema.data.joint import item_metadata

        return item_metadata(self.dataset, index)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["video"] = item["video"][:, ::self.stride]  # [C, F * stride, H, W] -> [C, F, H, W]
        return item
