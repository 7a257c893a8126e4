"""Video LDM's temporal decoder: an image autoencoder whose decoder is fine-tuned on video with added
temporal layers, to remove frame-to-frame flicker (Blattmann et al. 2023, "Align your Latents",
section 3.1.1 "Temporal Autoencoder Finetuning").

An image autoencoder decodes every latent frame on its own, so small independent errors per frame show
up as flicker when a video is decoded. Video LDM keeps the encoder of the image autoencoder unchanged (so
the latent space, and any latent diffusion model trained in it, stays valid) and inserts temporal layers
into the *decoder*, trained on video clips with the reconstruction loss and a patch-wise temporal
discriminator built from 3D convolutions (``train.autoencoder.disc=3d``,
:mod:`kinema.models.discriminator`).

:class:`TemporalDecoder` wraps a frozen image autoencoder (a kinema ``causal_ae`` checkpoint with
``temporal_factor`` 1, loaded from a local path) the way :class:`~kinema.models.temporal.VideoLDM` wraps
an image diffusion model:

- after every residual block of the image decoder a temporal layer ``l_phi^i`` (a residual block of
  3D convolutions, :class:`~kinema.models.temporal.Conv3DBlock`) is mixed in with a learned weight,
  ``z' = alpha z + (1 - alpha) l_phi^i(z)`` (:class:`~kinema.models.temporal.TemporalMixer`; the same
  mixing as the paper's temporal layers, section 3.1). The layers are attached by forward hooks for the
  duration of one decode, so the base module is never modified; an adapter of another autoencoder (e.g.
  a diffusers ``AutoencoderKL``) plugs in by listing its decoder's residual blocks in a
  ``decoder_layers()`` method (:class:`~kinema.models.temporal.SpatialLayer` s, ``frames_in_batch`` when
  its decoder folds frames into the batch);
- each temporal layer's last convolution is zero-initialized, so at the start the model decodes
  *bitwise* like the image autoencoder;
- the encoder is frozen (``requires_grad=False``, run without gradients): ``encode`` is the image
  encoder's, and the latent space is unchanged. Choice for the image decoder's own weights
  (``train_decoder``): the paper fine-tunes "the decoder" with the added layers; kinema's default keeps
  the image decoder frozen and trains only the temporal layers (a small checkpoint, and the per-frame
  decoder stays exactly the image model's when ``alpha = 1``); ``train_decoder: true`` fine-tunes it too.

Checkpoints hold only the trained tensors (the temporal layers, plus the decoder with
``train_decoder``); the base is recorded as the frozen part ``image_autoencoder`` by path and sha256
(:meth:`TemporalDecoder.frozen_parts`), so a checkpoint refuses to load onto a different base.

Decoding in chunks (``chunk_frames`` > 0) decodes each chunk of latent frames on its own: memory is
bounded, but the temporal layers do not see across a chunk boundary (0, the default, decodes the whole
clip at once).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Literal, Optional

import torch
from einops import rearrange
from torch import Tensor, nn

from kinema.models.autoencoder import (LOGVAR_RANGE, AutoencoderOutput, CausalAE, CausalResBlock, check_latent_input,
                                       encode_decode_runs, resolve_chunk, segment_runs)
from kinema.models.backbone import BackboneSpec
from kinema.models.blocks import zero_init_residual_outputs
from kinema.models.temporal import Conv3DBlock, SpatialLayer, TemporalMixer

IMAGE_AUTOENCODER = "image_autoencoder"  # the name of the frozen base's part in a system


@dataclass
class TemporalDecoderConfig:
    """``model.temporal_decoder``: ``base_path`` the image autoencoder (a kinema checkpoint or run
    directory of ``causal_ae`` with ``temporal_factor`` 1); ``train_decoder`` also fine-tune the image
    decoder's weights; ``conv_kernel`` of the temporal layers' 3D convolutions; ``alpha_init`` the blend
    weight of the image decoder's path at the start (any value in (0, 1) starts exactly as the image
    autoencoder); ``chunk_frames`` latent frames per chunk of :meth:`TemporalDecoder.decode` (0: all)."""

    base_path: str = ""
    train_decoder: bool = False
    conv_kernel: Literal["3x3x3", "3x1x1"] = "3x3x3"
    norm_groups: int = 8
    alpha_init: float = 0.5
    chunk_frames: int = 0

    def __post_init__(self) -> None:
        if self.conv_kernel not in ("3x3x3", "3x1x1"):
            raise ValueError(f"TemporalDecoderConfig.conv_kernel must be '3x3x3' or '3x1x1', got {self.conv_kernel!r}")
        if self.norm_groups < 1:
            raise ValueError(f"TemporalDecoderConfig.norm_groups must be >= 1, got {self.norm_groups}")
        if not 0.0 < self.alpha_init < 1.0:
            raise ValueError(f"TemporalDecoderConfig.alpha_init must be in (0, 1), got {self.alpha_init}")
        if self.chunk_frames < 0:
            raise ValueError(f"TemporalDecoderConfig.chunk_frames must be >= 0 (0: one pass), got {self.chunk_frames}")


def load_image_autoencoder(path: str) -> tuple[nn.Module, str]:
    """(the image autoencoder at ``path``, frozen and in eval mode; the resolved checkpoint directory)."""
    if not path:
        raise ValueError("model.temporal_decoder.base_path is empty: give the checkpoint (or run directory) of a "
                         "trained image autoencoder (model.name=causal_ae with temporal_factor 1)")
    # A kinema checkpoint needs the config and checkpoint layers above models/: the upward reference is
    # taken lazily, as for Video LDM's image model (docs/architecture.md).
    from kinema.system import load_system

    system, ckpt = load_system(path, ema=True, device="cpu")
    ae = system.model
    if not isinstance(ae, CausalAE) or ae.temporal_factor != 1:
        what = f"temporal_factor {ae.temporal_factor}" if isinstance(ae, CausalAE) else type(ae).__name__
        raise ValueError(f"model.temporal_decoder.base_path={path} is {what} ({ckpt}); the temporal decoder "
                         f"needs an image autoencoder: model.name=causal_ae with model.causal_ae.temporal_factor=1")
    return ae, str(ckpt.resolve())


def causal_ae_decoder_layers(ae: CausalAE) -> list[SpatialLayer]:
    """The residual blocks of a :class:`CausalAE` decoder (outputs ``[B, C, F, H, W]``)."""
    return [SpatialLayer(m, "conv", m.conv2.conv.out_channels, False)
            for m in ae.decoder.layers if isinstance(m, CausalResBlock)]


def _drop_base_tensors(module: "TemporalDecoder", state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: the frozen base is not saved (only what trains in it, with ``train_decoder``)."""
    for key in [k for k in state_dict if k.startswith(prefix + "base.")]:
        if key[len(prefix) + len("base."):] not in module.trained_base:
            del state_dict[key]


def _fill_base_tensors(module: "TemporalDecoder", state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: the base keeps its own (frozen) tensors."""
    for key, value in module.base.state_dict().items():
        state_dict.setdefault(prefix + "base." + key, value)


class TemporalDecoder(nn.Module):
    """A frozen image autoencoder whose decoder gets temporal layers (see the module docstring); a
    :class:`~kinema.models.autoencoder.VideoAutoencoder` with the base's latent space.

    ``forward(video, noise=None, frame_segments=None) -> (recon, mean, logvar)`` is the training pass of
    ``train.objective=autoencoder``: the frozen encoder's posterior (without gradients), ``z`` its sample
    (``noise``) or mean, each run of ``frame_segments`` decoded on its own with the temporal layers."""

    def __init__(self, cfg: TemporalDecoderConfig, base: Optional[nn.Module] = None,
                 source: Optional[str] = None) -> None:
        super().__init__()
        self.cfg = cfg
        if base is None:
            base, source = load_image_autoencoder(cfg.base_path)
        if source is None:
            raise ValueError("TemporalDecoder: a base given directly needs its source path (the frozen part is "
                             "recorded by path and sha256)")
        self.source = source
        self.base = base.requires_grad_(False).eval()
        self.in_channels, self.latent_channels = base.in_channels, base.latent_channels
        self.spatial_factor, self.temporal_factor = base.spatial_factor, base.temporal_factor
        self.layers = base.decoder_layers() if hasattr(base, "decoder_layers") else causal_ae_decoder_layers(base)
        spatial_kernel = 3 if cfg.conv_kernel == "3x3x3" else 1
        self.temporal = nn.ModuleList(TemporalMixer(Conv3DBlock(layer.channels, spatial_kernel, cfg.norm_groups),
                                                    cfg.alpha_init) for layer in self.layers)
        zero_init_residual_outputs(self.temporal)  # every temporal branch starts as the identity
        if cfg.train_decoder:
            decoder = base.decoder if hasattr(base, "decoder") else base
            decoder.requires_grad_(True)
        self.trained_base = {n for n, p in base.named_parameters() if p.requires_grad}
        self.register_state_dict_post_hook(_drop_base_tensors)
        self.register_load_state_dict_pre_hook(_fill_base_tensors)

    # ---- the VideoAutoencoder interface (the base's latent space) ----

    @property
    def spec(self) -> BackboneSpec:
        return self.base.spec

    @property
    def scale_factor(self) -> float:
        return self.base.scale_factor

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return self.base.latent_shape(frames, height, width)

    def encode(self, video: Tensor, chunk_frames: Optional[int] = None) -> Tensor:
        """The frozen image encoder's posterior means (unscaled), without gradients."""
        with torch.no_grad():
            return self.base.encode(video) if chunk_frames is None else self.base.encode(video, chunk_frames)

    def decode(self, latents: Tensor, chunk_frames: Optional[int] = None) -> Tensor:
        """Videos from unscaled latents ``[B, Cl, F', H', W']``, the temporal layers mixing frames, in chunks
        of ``chunk_frames`` latent frames (default ``cfg.chunk_frames``; 0: one pass), each on its own."""
        check_latent_input(self, latents)
        c = resolve_chunk(self.cfg.chunk_frames, chunk_frames)
        chunks = latents.split(c, dim=2) if c > 0 else (latents,)
        return torch.cat([self._decode_clip(part) for part in chunks], dim=2)

    # ---- training and hooks ----

    def last_layer_weight(self) -> Tensor:
        """The last trained layer of the decoder (for VQGAN's adaptive weight): the image decoder's output
        layer with ``train_decoder``, else the last temporal layer's output convolution."""
        if self.cfg.train_decoder and hasattr(self.base, "last_layer_weight"):
            return self.base.last_layer_weight()
        return self.temporal[-1].layer.out.weight

    def frozen_parts(self) -> dict[str, tuple[nn.Module, str]]:
        """name -> (module, local source path) of the frozen part inside this model (the image autoencoder)."""
        return {IMAGE_AUTOENCODER: (self.base, self.source)}

    def train(self, mode: bool = True) -> "TemporalDecoder":
        super().train(mode)
        self.base.eval()  # frozen: its running latent std does not move
        return self

    def posterior(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, logvar) of the frozen encoder, without gradients (a base without a posterior: its
        ``encode`` and the smallest log-variance)."""
        with torch.no_grad():
            if hasattr(self.base, "posterior"):
                return self.base.posterior(video)
            mean = self.base.encode(video)
            return mean, torch.full_like(mean, LOGVAR_RANGE[0])

    def forward(self, video: Tensor, noise: Optional[Tensor] = None,
                frame_segments: Optional[Tensor] = None) -> AutoencoderOutput:
        runs = segment_runs(frame_segments, video.shape[2])
        return encode_decode_runs(self.posterior, self._decode_clip, video, runs, noise)

    def _decode_clip(self, latents: Tensor) -> Tensor:
        """One clip's latents -> pixels in one pass of the base decoder, with the temporal layers hooked in."""
        with self._temporal_hooks(latents.shape[2]):
            return self.base.decode(latents, 0) if isinstance(self.base, CausalAE) else self.base.decode(latents)

    @contextmanager
    def _temporal_hooks(self, frames: int):
        hooks = [layer.module.register_forward_hook(partial(self._mix_hook, i, frames))
                 for i, layer in enumerate(self.layers)]
        try:
            yield
        finally:
            for handle in hooks:
                handle.remove()

    def _mix_hook(self, index: int, frames: int, module, args, output: Tensor) -> Tensor:
        """Forward hook on decoder block ``index``: its output -> the blend with its temporal layer."""
        if self.layers[index].frames_in_batch:  # [(B F), C, H, W] -> [B, C, F, H, W] and back
            video = rearrange(output, "(b f) c h w -> b c f h w", f=frames)
            return rearrange(self.temporal[index](video), "b c f h w -> (b f) c h w")
        return self.temporal[index](output)


__all__ = ["IMAGE_AUTOENCODER", "TemporalDecoder", "TemporalDecoderConfig", "causal_ae_decoder_layers",
           "load_image_autoencoder"]
