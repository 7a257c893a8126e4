"""Where diffusion runs: the space owns shapes, channels, clamping / thresholding and encode / decode.

Samplers and pipelines never assume pixels (DESIGN.md section 3, "Spaces"): they ask the space for
the shape of z (:meth:`PixelSpace.shape`), hand data to :meth:`~PixelSpace.encode` before training
and pass samples through :meth:`~PixelSpace.decode` at the edge, and take the sampler's
thresholding from :meth:`~PixelSpace.thresholding` (clipping x_hat to [-1, 1] is right for pixels
and wrong for latents, whose range is not [-1, 1]).

Today there is the pixel space; a latent space (an autoencoder part: encode = the encoder's
latents times the scale factor, decode = the decoder; thresholding off) registers in
:data:`SPACES` the same way.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from kinema.models.backbone import BackboneSpec

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


SPACES = {"pixel": PixelSpace}


def build_space(cfg, spec: BackboneSpec, parts=None):
    """The space ``cfg.model.space`` names, for a backbone ``spec`` (``parts``: e.g. an autoencoder)."""
    name = cfg.model.space
    if name not in SPACES:
        raise ValueError(f"unknown model.space {name!r}; valid: {', '.join(SPACES)}")
    return SPACES[name].from_config(cfg, spec, parts)


__all__ = ["PixelSpace", "SPACES", "build_space"]
