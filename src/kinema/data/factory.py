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
    scale = cfg.render_scale
    if scale != 1 and cfg.dataset not in ("bouncing_shapes", "moving_digits"):
        raise ValueError(f"data.render_scale={scale} applies to the synthetic datasets only (bouncing_shapes, "
                         f"moving_digits), not data.dataset={cfg.dataset}; set data.render_scale=1")
    if cfg.wall_margin and cfg.dataset != "bouncing_shapes":
        raise ValueError(f"data.wall_margin={cfg.wall_margin} applies to data.dataset=bouncing_shapes only, not "
                         f"{cfg.dataset}; set data.wall_margin=0")
    if cfg.dataset == "bouncing_shapes":
        ds = BouncingShapes(num_frames=synthetic_frames, size=cfg.size * scale, length=cfg.length, seed=cfg.seed,
                            wall_margin=cfg.wall_margin)
    elif cfg.dataset == "moving_digits":
        ds = MovingDigits(num_frames=synthetic_frames, size=cfg.size * scale, length=cfg.length, seed=cfg.seed,
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
    if scale > 1:
        ds = Shrunk(ds, cfg.size)
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


class _VideoTransform(Dataset):
    """A dataset whose items are another's with ``self.video(item["video"])`` in place of the video;
    the other fields (and :meth:`metadata`) are the wrapped dataset's."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def metadata(self, index: int) -> dict:
        """The wrapped dataset's item fields other than ``"video"`` (see :func:`kinema.data.joint.item_metadata`)."""
        from kinema.data.joint import item_metadata

        return item_metadata(self.dataset, index)

    def video(self, video):
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["video"] = self.video(item["video"])
        return item


class Shrunk(_VideoTransform):
    """A synthetic dataset drawn at a multiple of ``size`` and shrunk to ``size`` with antialiased
    bilinear resizing (``data.render_scale``): the same low-resolution clips as
    :func:`kinema.diffusion.superres.degrade` gives a spatial super-resolution stage, so that the base
    model of a cascade learns the distribution its SR stage was trained to read (soft, partially covered
    edge pixels rather than hard aliased ones)."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        super().__init__(dataset)
        self.size = size

    def video(self, video):
        from kinema.resize import resize_video

        return resize_video(video[None], (self.size, self.size), antialias=True)[0]


class StridedFrames(_VideoTransform):
    """Every ``stride``-th frame of a synthetic dataset's clips (``data.frame_stride``): the clip a base
    model of a cascade sees at the lower frame rate of a temporal super-resolution stage above it."""

    def __init__(self, dataset: Dataset, stride: int) -> None:
        super().__init__(dataset)
        self.stride = stride

    def video(self, video):
        return video[:, ::self.stride]  # [C, F * stride, H, W] -> [C, F, H, W]
