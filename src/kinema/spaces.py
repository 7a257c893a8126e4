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
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from kinema.models.autoencoder import VideoAutoencoder
from kinema.models.backbone import BackboneSpec, backbone_entry

THRESHOLDINGS = (None, "static", "dynamic")


class PixelSpace:
    """Videos ``[B, C, F, H, W]`` in [-1, 1] are the data diffusion runs on: encode and decode are the
    identity up to checks and clamping; samples may be thresholded (static or dynamic)."""

    name = "pixel"

    def __init__(self, channels: int, frames: int, size: int, spec: Optional[BackboneSpec] = None) -> None:
        if min(channels, frames, size) < 1:
            raise ValueError(f"pixel space needs positive channels / frames / size, got {channels} / {frames} / {size}")
        self.channels, self.frames, self.size, self.spec = channels, frames, size, spec

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

    def encode(self, video: Tensor) -> Tensor:
        """Data videos ``[B, C, F, H, W]`` in [-1, 1] -> the model's space (here: unchanged)."""
        self.check_channels(video.shape[1], "the input video")
        return video

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
        if cfg.data.image_fraction > 0:
            raise ValueError(f"model.space=latent does not support joint image-video training yet "
                             f"(data.image_fraction={cfg.data.image_fraction}); set data.image_fraction=0")
        latent_channels = part.module.latent_channels
        if spec.in_channels != latent_channels:
            section = backbone_entry(cfg.model.name).section
            raise ValueError(f"model.{section}.in_channels={spec.in_channels} but the autoencoder {cfg.model.autoencoder} "
                             f"gives {latent_channels}-channel latents; set model.{section}.in_channels={latent_channels}")
        try:
            return cls(part.module, cfg.data.num_frames, cfg.data.size, spec)
        except ValueError as e:
            raise ValueError(f"data.num_frames={cfg.data.num_frames} / data.size={cfg.data.size} in the latent space of "
                             f"{cfg.model.autoencoder}: {e}") from None

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

    def check_channels(self, channels: int, what: str = "the data") -> None:
        if channels != self.autoencoder.in_channels:
            raise ValueError(f"the autoencoder takes {self.autoencoder.in_channels}-channel videos but {what} has "
                             f"{channels} channels")

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """Videos ``[B, C, F, H, W]`` in [-1, 1] -> latents ``[B, C', F', H', W']`` times the scale factor."""
        self.check_channels(video.shape[1], "the input video")
        return self.autoencoder.encode(video) * self.autoencoder.scale_factor

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
