"""Training an autoencoder: the objective ``objective(parts, batch, rng) -> (loss, logs)`` of
``train.objective=autoencoder`` and its config section ``train.autoencoder``.

The loss of a KL-regularized autoencoder (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models", section 3 and appendix G; Kingma & Welling 2014)::

    L = w_1 |x - D(z)|_1 + w_2 |x - D(z)|_2^2 + w_KL KL(q(z | x) || N(0, I)),   z ~ q(z | x)

with every term a mean per element (pixels for the reconstruction, latents for the KL), so the
weights do not depend on the resolution. No perceptual or adversarial term yet. The trainer runs
this like any objective and knows nothing of autoencoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor

from kinema.models.autoencoder import causal_latent_shape, kl_divergence, segment_runs


@dataclass
class AutoencoderLossConfig:
    """``train.autoencoder``: weights of the autoencoder loss (see the module docstring)."""

    l1_weight: float = 1.0
    l2_weight: float = 0.0
    kl_weight: float = 1e-6
    sample_posterior: bool = True  # decode z ~ q(z | x) (True) or its mean (False)

    def __post_init__(self) -> None:
        for name in ("l1_weight", "l2_weight", "kl_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"train.autoencoder.{name} must be >= 0, got {getattr(self, name)}")
        if self.l1_weight == 0 and self.l2_weight == 0:
            raise ValueError("train.autoencoder needs a reconstruction term: l1_weight or l2_weight > 0")


def reconstruction_losses(recon: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(mean |x - recon|, mean (x - recon)^2) over all elements."""
    diff = (recon.float() - x.float())
    return diff.abs().mean(), diff.square().mean()


@dataclass
class AutoencoderObjective:
    """The autoencoder loss as a configured callable ``objective(parts, batch, rng) -> (loss, logs)``.

    ``parts["model"]`` is called ``model(x, noise, frame_segments) -> (recon, mean, logvar)``
    (:class:`~kinema.models.autoencoder.CausalAE`); ``noise`` (the posterior sample's, the one random
    draw, made through ``rng`` for the global batch) has the latents' shape: each run of
    ``frame_segments`` (a joint item's video, then each image) encoded on its own.
    """

    loss: AutoencoderLossConfig
    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    def latent_shape(self, x: Tensor, frame_segments: Optional[Tensor]) -> tuple[int, int, int, int]:
        """``(C, F', H', W')`` of the latents of ``x [B, C, F, H, W]`` split into its segment runs."""
        shapes = [causal_latent_shape(n, x.shape[3], x.shape[4], channels=self.latent_channels,
                                      spatial_factor=self.spatial_factor, temporal_factor=self.temporal_factor)
                  for n in segment_runs(frame_segments, x.shape[2])]
        c, _, h, w = shapes[0]
        return c, sum(s[1] for s in shapes), h, w

    def __call__(self, parts: Mapping[str, Callable], batch, rng) -> tuple[Tensor, dict]:
        x = batch.x  # [B, C, F, H, W] in [-1, 1]
        segments = getattr(batch.cond, "frame_segments", None)
        shape = self.latent_shape(x, segments)
        noise = None
        if self.loss.sample_posterior:
            noise = rng.draw(lambda n: torch.randn((n, *shape), generator=rng.generator, device=x.device,
                                                   dtype=x.dtype))
        recon, mean, logvar = parts["model"](x, noise, segments)
        l1, l2 = reconstruction_losses(recon, x)
        kl = kl_divergence(mean.float(), logvar.float()).mean()
        w = self.loss
        loss = w.l1_weight * l1 + w.l2_weight * l2 + w.kl_weight * kl
        return loss, {"loss": loss.detach(), "l1": l1.detach(), "l2": l2.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def preview(self, model, video: Tensor, frame_segments: Optional[Tensor] = None) -> Tensor:
        """The trainer's preview: ``[B, C, F, H, 2W]``, each input beside its reconstruction (posterior
        mean), in [-1, 1]."""
        recon = model(video, None, frame_segments).recon.float().clamp(-1, 1)
        return torch.cat([video.float(), recon], dim=4)


__all__ = ["AutoencoderLossConfig", "AutoencoderObjective", "reconstruction_losses"]
