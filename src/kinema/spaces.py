"""Where diffusion runs: the space owns shapes, channels, clamping / thresholding and encode / decode.

Samplers and pipelines never assume pixels (DESIGN.md section 3, "Spaces"): they ask the space for
the shape of z (:meth:`PixelSpace.shape`), hand data to :meth:`~PixelSpace.encode` before training
and pass samples through :meth:`~PixelSpace.decode` at the edge, and take the sampler's
thresholding from :meth:`~PixelSpace.thresholding` (clipping x_hat to [-1, 1] is right for pixels
and wrong for latents, whose range is not [-1, 1]).

:class:`LatentSpace` runs diffusion on the latents of a frozen autoencoder part (Rombach et al. 2022,
"Latent Diffusion Models", section 3; W.A.L.T, Gupta et al. 2023, section 3.1): encode = the
encoder's latents times the autoencoder's scale factor, decode = the decoder of latents / scale,
and no thresholding (latents do not live in [-1, 1]). Shapes are given in pixels and mapped to
latents (frames ``1 + tf k -> 1 + k``, sizes ``/ sf``).

Joint image-video items (``frame_segments``: the clip, then K independent images, see
:mod:`kinema.data.joint`) are encoded segment by segment and their segments mapped with
:meth:`~LatentSpace.latent_segments` (clip ``1 + tf k`` frames -> ``1 + k`` latent frames, each image ->
one latent frame), so the trainer stays space-agnostic: ``z = space.encode(x, segments)``,
``segments = space.latent_segments(segments)``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from kinema.data.joint import image_count
from kinema.models.autoencoder import VideoAutoencoder, latent_frame_segments, segment_runs
from kinema.models.backbone import BackboneSpec, backbone_entry

THRESHOLDINGS = (None, "static", "dynamic")


class PixelSpace:
    """Videos ``[B, C, F, H, W]`` in [-1, 1] are the data diffusion runs on: encode and decode are the
    identity up to checks and clamping; samples may be thresholded (static or dynamic)."""

    name = "pixel"
    temporal_factor = 1  # pixel frame i is frame i of z

    def __init__(self, channels: int, frames: int, size: int, spec: Optional[BackboneSpec] = None) -> None:
        if min(channels, frames, size) < 1:
            raise ValueError(f"pixel space needs positive channels / frames / size, got {channels} / {frames} / {size}")
        self.channels, self.frames, self.size, self.spec = channels, frames, size, spec
        self.video_channels = channels  # channels of the videos read and written at the edges

    @classmethod
    def from_config(cls, cfg, spec: BackboneSpec, parts=None) -> "PixelSpace":
        """The space of a config's data (``data.num_frames``, ``data.size``) for a backbone ``spec``."""
        return cls(spec.in_channels, cfg.data.num_frames, cfg.data.size, spec)

    def shape(self, frames: Optional[int] = None, size: Optional[int] = None) -> tuple[int, int, int, int]:
        """``(C, F, H, W)`` of z for videos of ``frames`` frames of ``size x size`` (default: as trained),
        checked against the backbone's constraints."""
        f = self.frames if frames is None else frames
        s = self.size if size is None else size
        if f < 1 or s < 1:
            raise ValueError(f"frames and size must be >= 1, got frames={f}, size={s}")
        if self.spec is not None:
            self.spec.check_video_shape(f, s, s)
        return self.channels, f, s, s

    def check_channels(self, channels: int, what: str = "the data") -> None:
        if channels != self.channels:
            raise ValueError(f"the model takes {self.channels}-channel videos but {what} has {channels} channels")

    def encode(self, video: Tensor, frame_segments: Optional[Tensor] = None) -> Tensor:
        """Data videos ``[B, C, F, H, W]`` in [-1, 1] -> the model's space (here: unchanged);
        ``frame_segments [B, F]`` (joint items), when given, must match the video's frames."""
        self.check_channels(video.shape[1], "the input video")
        if frame_segments is not None and tuple(frame_segments.shape) != (video.shape[0], video.shape[2]):
            raise ValueError(f"frame_segments must be [B, F] = {[video.shape[0], video.shape[2]]}, "
                             f"got {list(frame_segments.shape)}")
        return video

    def latent_segments(self, frame_segments: Optional[Tensor]) -> Optional[Tensor]:
        """The ``frame_segments`` of the encoded video: pixels are their own space, so unchanged."""
        return frame_segments

    def decode(self, z: Tensor) -> Tensor:
        """Samples -> float32 videos in [-1, 1] (clamped)."""
        return z.float().clamp(-1, 1)

    def thresholding(self, requested: Optional[str]) -> Optional[str]:
        """The sampler's thresholding of x_hat: pixels allow ``static`` and ``dynamic`` (Imagen)."""
        if requested not in THRESHOLDINGS:
            raise ValueError(f"unknown thresholding {requested!r}; choose one of {THRESHOLDINGS}")
        return requested


class LatentSpace:
    """Diffusion on the scaled latents of a frozen :class:`~kinema.models.autoencoder.VideoAutoencoder`
    (see the module docstring). ``frames`` / ``size``: the pixel shape the model was trained on.
    Shapes that do not fit the autoencoder (frames not ``1 + tf k``, sizes not divisible by its
    spatial factor) or the backbone (its ``spec`` on the latent shape) are errors before compute."""

    name = "latent"

    def __init__(self, autoencoder: VideoAutoencoder, frames: int, size: int,
                 spec: Optional[BackboneSpec] = None) -> None:
        if not isinstance(autoencoder, VideoAutoencoder):
            raise TypeError(f"a latent space needs a VideoAutoencoder, got {type(autoencoder).__name__}")
        self.autoencoder, self.frames, self.size, self.spec = autoencoder, frames, size, spec
        self.channels = autoencoder.latent_channels
        self.video_channels = autoencoder.in_channels  # channels of the videos read and written at the edges
        self.temporal_factor = autoencoder.temporal_factor  # 1: latent frame i is pixel frame i
        if spec is not None and spec.in_channels != self.channels:
            raise ValueError(f"the backbone takes {spec.in_channels}-channel inputs but the autoencoder's latents have "
                             f"{self.channels} channels")
        self.shape()  # the trained shape must fit, checked now

    @classmethod
    def from_config(cls, cfg, spec: BackboneSpec, parts=None) -> "LatentSpace":
        """The latent space of ``parts["autoencoder"]`` for ``data.num_frames x data.size^2`` videos."""
        part = (parts or {}).get("autoencoder")
        if part is None:
            raise ValueError("model.space=latent needs an autoencoder part: set model.autoencoder=PATH")
        latent_channels = part.module.latent_channels
        if spec.in_channels != latent_channels:
            section = backbone_entry(cfg.model.name).section
            if hasattr(cfg.model.backbone, "in_channels"):
                raise ValueError(f"model.{section}.in_channels={spec.in_channels} but the autoencoder "
                                 f"{cfg.model.autoencoder} gives {latent_channels}-channel latents; set "
                                 f"model.{section}.in_channels={latent_channels}")
            raise ValueError(f"the {cfg.model.name} backbone (its pretrained base, model.{section}) takes "
                             f"{spec.in_channels}-channel inputs but the autoencoder {cfg.model.autoencoder} gives "
                             f"{latent_channels}-channel latents; use an autoencoder with {spec.in_channels} latent "
                             f"channels (or a base made for {latent_channels})")
        try:
            space = cls(part.module, cfg.data.num_frames, cfg.data.size, spec)
        except ValueError as e:
            raise ValueError(f"data.num_frames={cfg.data.num_frames} / data.size={cfg.data.size} in the latent space of "
                             f"{cfg.model.autoencoder}: {e}") from None
        if cfg.data.image_fraction > 0:  # joint items: the clip's latent frames, then one per appended image
            space.check_joint(image_count(cfg.data.num_frames, cfg.data.image_fraction))
        return space

    def shape(self, frames: Optional[int] = None, size: Optional[int] = None) -> tuple[int, int, int, int]:
        """``(C, F', H', W')`` of z for videos of ``frames`` pixel frames of ``size x size`` (default: as
        trained), checked against the autoencoder's factors and the backbone's constraints."""
        f = self.frames if frames is None else frames
        s = self.size if size is None else size
        c, lf, lh, lw = self.autoencoder.latent_shape(f, s, s)
        if self.spec is not None:
            self.spec.check_video_shape(lf, lh, lw, what=f"latent video ({lf} frames of {lh}x{lw} from {f} frames "
                                                         f"of {s}x{s} pixels)")
        return c, lf, lh, lw

    def check_joint(self, num_images: int) -> None:
        """Joint items of the trained clip plus ``num_images`` images (1 latent frame each) must fit the
        backbone (e.g. W.A.L.T's spatiotemporal window in time): one error naming the counts, before compute."""
        c, lf, lh, lw = self.shape()
        if self.spec is not None:
            try:
                self.spec.check_video_shape(lf + num_images, lh, lw, what="joint latent item")
            except ValueError as e:
                raise ValueError(f"data.image_fraction appends {num_images} images (1 latent frame each) to the "
                                 f"{lf} latent frames of each {self.frames}-frame clip: {e}") from None

    def check_channels(self, channels: int, what: str = "the data") -> None:
        if channels != self.autoencoder.in_channels:
            raise ValueError(f"the autoencoder takes {self.autoencoder.in_channels}-channel videos but {what} has "
                             f"{channels} channels")

    @torch.no_grad()
    def encode(self, video: Tensor, frame_segments: Optional[Tensor] = None) -> Tensor:
        """Videos ``[B, C, F, H, W]`` in [-1, 1] -> latents ``[B, C', F', H', W']`` times the scale factor.
        With ``frame_segments [B, F]`` (a joint item: the clip, then images) each run of equal ids is
        encoded on its own and the latents concatenated along time, in the order of
        :meth:`latent_segments`; every run must be ``1 + tf k`` frames (checked before compute)."""
        self.check_channels(video.shape[1], "the input video")
        if frame_segments is None:
            return self.autoencoder.encode(video) * self.autoencoder.scale_factor
        self.latent_segments(frame_segments)  # every run fits the autoencoder, or one clear error now
        runs = segment_runs(frame_segments, video.shape[2])
        z = torch.cat([self.autoencoder.encode(part) for part in video.split(runs, dim=2)], dim=2)
        return z * self.autoencoder.scale_factor

    def latent_segments(self, frame_segments: Optional[Tensor]) -> Optional[Tensor]:
        """Pixel ``frame_segments [B, F]`` -> the latent frames' ``[B, F']``
        (:func:`~kinema.models.autoencoder.latent_frame_segments`); None stays None."""
        if frame_segments is None:
            return None
        return latent_frame_segments(frame_segments, self.autoencoder.temporal_factor)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Latents -> float32 videos in [-1, 1] (decoded from ``z / scale_factor``, clamped)."""
        return self.autoencoder.decode(z.float() / self.autoencoder.scale_factor).float().clamp(-1, 1)

    def thresholding(self, requested: Optional[str]) -> Optional[str]:
        """None whatever is requested: latents are never clipped (their range is not [-1, 1])."""
        if requested not in THRESHOLDINGS:
            raise ValueError(f"unknown thresholding {requested!r}; choose one of {THRESHOLDINGS}")
        return None


SPACES = {"pixel": PixelSpace, "latent": LatentSpace}


def build_space(cfg, spec: BackboneSpec, parts=None):
    """The space ``cfg.model.space`` names, for a backbone ``spec`` (``parts``: e.g. an autoencoder)."""
    name = cfg.model.space
    if name not in SPACES:
        raise ValueError(f"unknown model.space {name!r}; valid: {', '.join(SPACES)}")
    return SPACES[name].from_config(cfg, spec, parts)


__all__ = ["LatentSpace", "PixelSpace", "SPACES", "build_space"]
