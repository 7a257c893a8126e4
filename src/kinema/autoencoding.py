"""Training an autoencoder: the objective ``objective(parts, batch, rng) -> (loss, logs)`` of
``train.objective=autoencoder`` and its config section ``train.autoencoder``.

The loss of a KL-regularized autoencoder (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models", section 3 and appendix G; Kingma & Welling 2014)::

    L = w_1 |x - D(z)|_1 + w_2 |x - D(z)|_2^2 + w_KL KL(q(z | x) || N(0, I)),   z ~ q(z | x)

with every term a mean per element (pixels for the reconstruction, latents for the KL), so the
weights do not depend on the resolution. No perceptual term yet.

**Adversarial term** (``train.autoencoder.disc`` = ``2d`` / ``3d``; Esser et al. 2021, "Taming
Transformers" (VQGAN), section 3.1; Video LDM's decoder fine-tuning, Blattmann et al. 2023, section
3.1.1): a patch discriminator D (:mod:`kinema.models.discriminator`) is a second trainable part,
``discriminator``, with its own optimizer. From step ``disc_start`` on, the objective returns one loss
per part::

    model:          L + w_adv * hinge_g(D(x_hat))      hinge_g = -mean D(x_hat)
    discriminator:  hinge_d(D(x), D(sg(x_hat)))        0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))

(hinge loss, Lim & Ye 2017, as in VQGAN), and the trainer back-propagates each only into its own part.
``w_adv = disc_weight``, times, with ``disc_adaptive``, VQGAN's adaptive weight (eq. 7)
``lambda = |grad_{G_L} L_rec| / (|grad_{G_L} L_GAN| + delta)`` at the decoder's last trained layer G_L
(:func:`adaptive_weight`). Before ``disc_start`` the objective returns the plain loss and the
discriminator does not train. The trainer runs this like any objective and knows nothing of
autoencoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Optional

import torch
from torch import Tensor, nn

from kinema.models.autoencoder import causal_latent_shape, kl_divergence, segment_runs
from kinema.models.discriminator import DiscriminatorConfig, build_discriminator, hinge_d_loss, hinge_g_loss

DISCRIMINATOR = "discriminator"  # the name of the discriminator's part in a system
ADAPTIVE_DELTA = 1e-6  # delta of VQGAN's adaptive weight (eq. 7)
ADAPTIVE_MAX = 1e4  # the adaptive weight is clamped to [0, ADAPTIVE_MAX] (as in the VQGAN code)


@dataclass
class AutoencoderLossConfig:
    """``train.autoencoder``: weights of the autoencoder loss (see the module docstring)."""

    l1_weight: float = 1.0
    l2_weight: float = 0.0
    kl_weight: float = 1e-6
    sample_posterior: bool = True  # decode z ~ q(z | x) (True) or its mean (False)
    disc: Literal["none", "2d", "3d"] = "none"  # patch discriminator: per frame (2d) or 3D convolutions (3d)
    disc_weight: float = 0.5  # weight of the generator's adversarial term
    disc_adaptive: bool = True  # times VQGAN's adaptive weight (eq. 7)
    disc_start: int = 0  # optimizer step from which the adversarial term (and the discriminator) trains
    disc_width: int = 32
    disc_layers: int = 2  # stride-2 layers: data.size must be >= 2^(disc_layers + 1)
    disc_lr: Optional[float] = None  # the discriminator's learning rate (None: train.lr)

    def __post_init__(self) -> None:
        for name in ("l1_weight", "l2_weight", "kl_weight", "disc_weight", "disc_start"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"train.autoencoder.{name} must be >= 0, got {getattr(self, name)}")
        if self.l1_weight == 0 and self.l2_weight == 0:
            raise ValueError("train.autoencoder needs a reconstruction term: l1_weight or l2_weight > 0")
        if self.disc not in ("none", "2d", "3d"):
            raise ValueError(f"train.autoencoder.disc must be none, 2d or 3d, got {self.disc!r}")
        for name in ("disc_width", "disc_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.autoencoder.{name} must be >= 1, got {getattr(self, name)}")
        if self.disc_lr is not None and not self.disc_lr > 0:
            raise ValueError(f"train.autoencoder.disc_lr must be > 0 (or null: train.lr), got {self.disc_lr}")

    def discriminator(self, in_channels: int) -> Optional[nn.Module]:
        """A fresh patch discriminator for ``in_channels``-channel videos (None when ``disc=none``)."""
        if self.disc == "none":
            return None
        return build_discriminator(DiscriminatorConfig(self.disc, in_channels, self.disc_width, self.disc_layers))


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DDP (``module``) or ``torch.compile`` (``_orig_mod``) wrapper."""
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, delta: float = ADAPTIVE_DELTA) -> Tensor:
    """VQGAN's adaptive weight of the adversarial term (Esser et al. 2021, eq. 7):
    ``lambda = |grad_{G_L} L_rec| / (|grad_{G_L} L_GAN| + delta)``, the ratio of the two losses' gradient
    norms at the generator's last layer ``last_layer``, clamped to [0, 1e4] and detached (a weight, not a
    path for gradients). It balances the terms whatever their scales."""
    g_rec, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_gan, = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    return (g_rec.norm() / (g_gan.norm() + delta)).clamp(0.0, ADAPTIVE_MAX).detach()


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
    ``frame_segments`` (a joint item's video, then each image) encoded on its own. The loss is a
    tensor, or from ``disc_start`` on (with a discriminator) ``{"model": L_G, "discriminator": L_D}``.
    """

    loss: AutoencoderLossConfig
    latent_channels: Optional[int] = None  # None: read from the model (a wrapper of a frozen autoencoder)
    spatial_factor: Optional[int] = None
    temporal_factor: Optional[int] = None

    def latent_shape(self, x: Tensor, frame_segments: Optional[Tensor], model=None) -> tuple[int, int, int, int]:
        """``(C, F', H', W')`` of the latents of ``x [B, C, F, H, W]`` split into its segment runs; the
        geometry is this objective's, or (when not given) that of ``model`` (a ``VideoAutoencoder``)."""
        g = self if self.latent_channels is not None else unwrap(model)
        shapes = [causal_latent_shape(n, x.shape[3], x.shape[4], channels=g.latent_channels,
                                      spatial_factor=g.spatial_factor, temporal_factor=g.temporal_factor)
                  for n in segment_runs(frame_segments, x.shape[2])]
        c, _, h, w = shapes[0]
        return c, sum(s[1] for s in shapes), h, w

    def __call__(self, parts: Mapping[str, Callable], batch, rng) -> tuple[Tensor, dict]:
        x = batch.x  # [B, C, F, H, W] in [-1, 1]
        segments = getattr(batch.cond, "frame_segments", None)
        shape = self.latent_shape(x, segments, parts["model"])
        noise = None
        if self.loss.sample_posterior:
            noise = rng.draw(lambda n: torch.randn((n, *shape), generator=rng.generator, device=x.device,
                                                   dtype=x.dtype))
        recon, mean, logvar = parts["model"](x, noise, segments)
        l1, l2 = reconstruction_losses(recon, x)
        kl = kl_divergence(mean.float(), logvar.float()).mean()
        w = self.loss
        rec = w.l1_weight * l1 + w.l2_weight * l2
        loss = rec + w.kl_weight * kl
        logs = {"loss": loss.detach(), "l1": l1.detach(), "l2": l2.detach(), "kl": kl.detach()}
        if w.disc == "none" or getattr(batch, "step", 0) < w.disc_start:
            return loss, logs
        return self.adversarial(parts, x, recon, rec, loss, logs)

    def adversarial(self, parts: Mapping[str, Callable], x: Tensor, recon: Tensor, rec: Tensor, loss: Tensor,
                    logs: dict) -> tuple[dict, dict]:
        """The per-part losses once the discriminator is on (see the module docstring)."""
        if DISCRIMINATOR not in parts:
            raise ValueError(f"train.autoencoder.disc={self.loss.disc} needs a {DISCRIMINATOR!r} part; the system has "
                             f"{sorted(parts)} (build it with kinema.system.build_system)")
        disc, w = parts[DISCRIMINATOR], self.loss
        g_adv = hinge_g_loss(disc(recon))
        weight = torch.tensor(w.disc_weight, device=x.device)
        if w.disc_adaptive:
            model = unwrap(parts["model"])
            if not hasattr(model, "last_layer_weight"):
                raise ValueError(f"train.autoencoder.disc_adaptive needs the model's last layer ({type(model).__name__} "
                                 f"has no last_layer_weight()); set train.autoencoder.disc_adaptive=false")
            weight = weight * adaptive_weight(rec, g_adv, model.last_layer_weight())
        d_loss = hinge_d_loss(disc(x), disc(recon.detach()))
        logs.update(g_adv=g_adv.detach(), d_loss=d_loss.detach(), adv_weight=weight.detach())
        return {"model": loss + weight * g_adv, DISCRIMINATOR: d_loss}, logs

    @torch.no_grad()
    def preview(self, model, video: Tensor, frame_segments: Optional[Tensor] = None) -> Tensor:
        """The trainer's preview: ``[B, C, F, H, 2W]``, each input beside its reconstruction (posterior
        mean), in [-1, 1]."""
        recon = model(video, None, frame_segments).recon.float().clamp(-1, 1)
        return torch.cat([video.float(), recon], dim=4)


__all__ = ["DISCRIMINATOR", "AutoencoderLossConfig", "AutoencoderObjective", "adaptive_weight", "reconstruction_losses",
           "unwrap"]
