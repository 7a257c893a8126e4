"""Video LDM temporal alignment of a frozen image model (Blattmann et al. 2023, "Align your Latents",
section 3.1 and figure 2).

An image diffusion model becomes a video model by interleaving *temporal* layers with its frozen
*spatial* layers. The spatial layers see the video as a batch of independent images
(``'b c f h w -> (b f) c h w'``); after each one, a temporal layer ``l_phi^i`` mixes the frames and
its output is blended with the spatial one by a learned scalar (section 3.1):

    z' = alpha_phi^i * z + (1 - alpha_phi^i) * z'',   alpha_phi^i = sigmoid(phi^i) in (0, 1)

(:func:`mix_spatial_temporal`; ``z`` the spatial layer's output, ``z''`` the temporal layer's). Two
kinds of temporal layers, as in the paper: temporal self-attention over frames with sinusoidal frame
position encodings (:class:`FrameAttention`, after every spatial attention layer) and residual blocks
of 3D convolutions (:class:`Conv3DBlock`, kernel 3x3x3 or 3x1x1, after every spatial residual block).
Only the temporal parameters train.

Starting exactly as the image model: every temporal layer is a residual branch whose last layer
(``out``) is zero-initialized, so ``z'' == z`` bitwise at initialization, and the blend is computed as
``z + (1 - alpha) * (z'' - z)``, which is then ``z`` bitwise for any finite ``phi`` (and for
``alpha == 1`` whatever the temporal weights). The video model's output therefore equals the image
model's frame by frame at initialization, not just approximately.

Where the layers go (:class:`VideoLDM`): the image model is wrapped by an adapter that runs it frame by
frame and lists its spatial layers (:meth:`KinemaImageBase.spatial_layers`,
:meth:`DiffusersImageBase.spatial_layers`). For the duration of one forward call, :class:`VideoLDM`
registers a forward hook on each listed layer that replaces the layer's output by the blend above (and
removes the hooks afterwards, so the frozen base module is never modified, copies of the model such as
the EMA copy stay independent, and no per-call state outlives the call). Two bases:

- kinema's own ``unet3d`` trained on 1-frame items (an "image LDM"), loaded from a local kinema
  checkpoint. It is run with every frame in its own ``frame_segments`` segment, which makes it exactly
  an image model applied to each frame (its own temporal layers then see one frame each, as in its
  training). Temporal layers go after its ``ResBlock`` s (3D conv) and ``SpatialAttention`` s
  (temporal attention).
- a diffusers ``UNet2DConditionModel`` loaded from a local directory (``from_pretrained(dir,
  local_files_only=True)``; diffusers is an optional extra). Frames are folded into the batch;
  temporal layers go after every ``ResnetBlock2D`` (3D conv) and ``Transformer2DModel`` (temporal
  attention) in its down / mid / up blocks. Text goes through the UNet's own cross-attention
  (``encoder_hidden_states`` = ``cond.text_emb``); the log-SNR is mapped to the UNet's discrete
  training timestep (:func:`logsnr_to_timestep`).

Prediction and interpolation models (section 3.1.2, "Prediction models for long-term generation", and
section 3.2, "Temporal interpolation for high frame rates") condition on known frames by
masking-conditioning: the masked, encoded context frames and a binary mask channel (``cond.context``,
``cond.context_mask``; ``extra_in_channels = C + 1``) are "fed into the temporal layers after being
processed with a learned downsampling operation". Here each temporal layer gets them area-downsampled
to its resolution and through its own zero-initialized 1x3x3 convolution (:class:`ContextInput`), added
to the temporal layer's input; the frozen spatial path never sees them. Zero-initialized, so a fresh
prediction model is exactly the plain video model (and at alignment's start, the image model).

Frames mix only inside temporal layers, and those obey ``cond.frame_segments`` (joint image-video
training): attention is masked across segments, a convolution treats a neighbour from another segment
as zero padding, and positions count from each segment's first frame.

The base is frozen (``requires_grad=False``, eval mode, not in the optimizer or EMA) and is not part
of :meth:`VideoLDM.state_dict`: checkpoints hold the temporal parameters only, and the system records
the base as a frozen part by path and sha256 (:meth:`VideoLDM.frozen_parts`), so a checkpoint refuses
to load onto a different base.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from kinema.conditioning import with_fields
from kinema.models.attention import SpatialAttention, _SelfAttention, _stride0_bias, frame_attention_bias
from kinema.models.backbone import BackboneSpec
from kinema.models.blocks import (ResBlock, ResidualBranch, frame_positions, group_norm, segment_conv3d,
                                  sinusoidal_embedding, zero_init_residual_outputs)
from kinema.models.embeddings import conditioning_channels
from kinema.models.text import TextConditioned
from kinema.models.unet import UNet3D

IMAGE_BASES = ("kinema", "diffusers")
BASE = "image_model"  # the name of the frozen base's part in a system


@dataclass
class VideoLDMConfig:
    """Hyper-parameters of :class:`VideoLDM` (``model.video_ldm``; validated on construction, except that
    ``base_path`` is checked when the base is loaded).

    ``base``: ``kinema`` (a kinema checkpoint or run directory of a ``unet3d`` image model) or
    ``diffusers`` (a local ``UNet2DConditionModel`` folder, e.g. Stable Diffusion's ``unet/``);
    ``temporal_attention`` / ``temporal_conv``: which temporal layers to insert; ``conv_kernel``: the
    3D convolutions' kernel; ``alpha_init``: the blend weight of the spatial path at initialization (any
    value in (0, 1) starts exactly as the image model; 0.5 lets the temporal branch learn at half rate).
    ``num_train_timesteps`` / ``beta_*``: the diffusers UNet's discrete training schedule (Stable Diffusion's
    defaults), used only to map log-SNR to its timestep input. ``extra_in_channels``: channels taken from
    ``cond`` into every temporal layer (:class:`ContextInput`): ``C + 1`` for a prediction / interpolation
    model (``train.context``: the masked context frames and their mask); 0 for none.
    """

    base: Literal["kinema", "diffusers"] = "kinema"
    base_path: str = ""
    temporal_attention: bool = True
    temporal_conv: bool = True
    conv_kernel: Literal["3x3x3", "3x1x1"] = "3x3x3"
    head_dim: int = 32
    norm_groups: int = 32
    alpha_init: float = 0.5
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    extra_in_channels: int = 0

    def __post_init__(self) -> None:
        if self.base not in IMAGE_BASES:
            raise ValueError(f"VideoLDMConfig.base must be one of {IMAGE_BASES}, got {self.base!r}")
        if self.conv_kernel not in ("3x3x3", "3x1x1"):
            raise ValueError(f"VideoLDMConfig.conv_kernel must be '3x3x3' or '3x1x1', got {self.conv_kernel!r}")
        if not (self.temporal_attention or self.temporal_conv):
            raise ValueError("VideoLDMConfig: temporal_attention and temporal_conv are both False; a video model "
                             "needs at least one kind of temporal layer")
        for name in ("head_dim", "norm_groups", "num_train_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"VideoLDMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.extra_in_channels < 0:
            raise ValueError(f"VideoLDMConfig.extra_in_channels must be >= 0 (C + 1 for context frames and their "
                             f"mask), got {self.extra_in_channels}")
        if not 0.0 < self.alpha_init < 1.0:
            raise ValueError(f"VideoLDMConfig.alpha_init must be in (0, 1) (alpha = sigmoid of a finite logit), "
                             f"got {self.alpha_init}")
        if self.beta_schedule not in ("scaled_linear", "linear"):
            raise ValueError(f"VideoLDMConfig.beta_schedule must be 'scaled_linear' or 'linear', "
                             f"got {self.beta_schedule!r}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(f"VideoLDMConfig needs 0 < beta_start < beta_end < 1, got {self.beta_start}, "
                             f"{self.beta_end}")


# ---- the math -------------------------------------------------------------------------------------


def mix_spatial_temporal(z_spatial: Tensor, z_temporal: Tensor, mix_logit: Tensor) -> Tensor:
    """Video LDM's learned blend (Blattmann et al. 2023, section 3.1):
    ``z' = alpha z + (1 - alpha) z''`` with ``alpha = sigmoid(mix_logit)``.

    Computed as ``z + (1 - alpha) (z'' - z)`` (the same number in exact arithmetic), so that
    ``z'' == z`` or ``alpha == 1`` returns ``z_spatial`` bitwise: the video model starts as the image
    model exactly. Shapes broadcast; ``mix_logit`` is a scalar."""
    return z_spatial + (1.0 - torch.sigmoid(mix_logit)).to(z_spatial.dtype) * (z_temporal - z_spatial)


def alpha_logit(alpha: float) -> float:
    """The finite ``phi`` with ``sigmoid(phi) = alpha`` for ``alpha`` in (0, 1)."""
    return math.log(alpha / (1.0 - alpha))


def logsnr_to_timestep(logsnr: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The (real-valued) discrete timestep of a DDPM-trained network at which the noise level is
    ``logsnr``: with ``lambda_i = log(abar_i / (1 - abar_i))`` (Ho et al. 2020's ``abar``; decreasing in
    i), the ``t`` with ``lambda(t) = logsnr`` under linear interpolation between integer steps, clamped
    to ``[0, N - 1]``. Exact at the table's entries (``lambda_i -> i``). Float64 inside."""
    table = torch.log(alphas_cumprod.double()) - torch.log1p(-alphas_cumprod.double())  # [N], decreasing
    rising = table.flip(0)  # increasing: rising[j] = table[N - 1 - j]
    x = logsnr.double().clamp(rising[0], rising[-1])
    j = torch.searchsorted(rising, x).clamp(1, len(rising) - 1)  # rising[j - 1] <= x <= rising[j]
    lo, hi = rising[j - 1], rising[j]
    frac = (x - lo) / (hi - lo)  # 0 at lo, 1 at hi
    position = (j - 1).double() + frac  # index into `rising`
    return (len(rising) - 1) - position  # back to the decreasing table's index


def ddpm_alphas_cumprod(num_steps: int, beta_start: float, beta_end: float, schedule: str) -> Tensor:
    """``abar_i = prod_{s<=i} (1 - beta_s)`` for the DDPM betas (Ho et al. 2020): ``linear`` spaces beta
    linearly, ``scaled_linear`` (Stable Diffusion / LDM, Rombach et al. 2022) spaces sqrt(beta) linearly."""
    if schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}; choose scaled_linear or linear")
    return torch.cumprod(1.0 - betas, dim=0)


# ---- temporal layers ------------------------------------------------------------------------------


class FrameAttention(_SelfAttention):
    """Temporal self-attention over the F frames at each spatial position, with sinusoidal frame
    position encodings (Video LDM section 3.1 / appendix): ``x + out(attn(GN(x) + pos))``, where
    ``pos [B, F, C]`` encodes each frame's position within its segment and attention is masked across
    ``frame_segments`` segments. ``x [B, C, F, H, W]``; ``out`` zero-initialized (a fresh layer is the
    identity)."""

    def forward(self, x: Tensor, frame_segments: Optional[Tensor] = None) -> Tensor:
        b, c, f, h, w = x.shape
        pos = sinusoidal_embedding(frame_positions(f, frame_segments, x.device).expand(b, f).flatten(), c)  # [(B F), C]
        tokens = rearrange(self.norm(x), "b c f h w -> b (h w) f c") + pos.view(b, 1, f, c).to(x.dtype)
        q, k, v = rearrange(self.qkv(tokens), "b l f (three heads d) -> three (b heads) l f d",
                            three=3, heads=self.heads)  # each [(B heads), HW, F, d]
        mask = None
        if frame_segments is not None:  # -inf across segments, no position bias (positions are in the tokens)
            bias = frame_attention_bias(frame_segments, x.new_zeros(self.heads, f, f))  # [B, heads, F, F]
            mask = _stride0_bias(bias, b, h * w, q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [(B heads), HW, F, d]
        o = self.out(rearrange(o, "(b heads) l f d -> b l f (heads d)", b=b))  # [B, HW, F, C]
        return x + rearrange(o, "b (h w) f c -> b c f h w", h=h)


class Conv3DBlock(ResidualBranch):
    """Residual block of 3D convolutions over (frames, H, W) (Video LDM section 3.1):
    ``x + out(SiLU(GN(conv(SiLU(GN(x))))))`` with kernels ``3 x k x k`` (``k`` = 3 or 1), segment-masked
    in time (:func:`segment_conv3d`), ``out`` zero-initialized. ``x [B, C, F, H, W]``."""

    def __init__(self, channels: int, spatial_kernel: int = 3, norm_groups: int = 32) -> None:
        super().__init__()
        kernel, pad = (3, spatial_kernel, spatial_kernel), (1, spatial_kernel // 2, spatial_kernel // 2)
        self.norm1 = group_norm(channels, norm_groups)
        self.conv = nn.Conv3d(channels, channels, kernel, padding=pad)
        self.norm2 = group_norm(channels, norm_groups)
        self.out = nn.Conv3d(channels, channels, kernel, padding=pad)

    def forward(self, x: Tensor, frame_segments: Optional[Tensor] = None) -> Tensor:
        h = segment_conv3d(F.silu(self.norm1(x)), self.conv, frame_segments)
        return x + segment_conv3d(F.silu(self.norm2(h)), self.out, frame_segments)


class ContextInput(ResidualBranch):
    """Masking-conditioning of one temporal layer (Video LDM section 3.1.2): ``z + out(down(extra))``, where
    ``extra [B, E, F, H, W]`` are the channels from ``cond`` (the masked context frames and the mask, at
    z's full resolution), ``down`` averages them to z's ``h x w`` (area) and ``out`` is a zero-initialized
    1x3x3 convolution to z's channels (per frame: no information crosses frames here). ``z [B, C, F, h, w]``."""

    def __init__(self, extra_channels: int, channels: int) -> None:
        super().__init__()
        self.out = nn.Conv3d(extra_channels, channels, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, z: Tensor, extra: Tensor) -> Tensor:
        if extra.shape[-2:] != z.shape[-2:]:
            frames = rearrange(extra, "b e f h w -> (b f) e h w")
            extra = rearrange(F.adaptive_avg_pool2d(frames, z.shape[-2:]), "(b f) e h w -> b e f h w", b=z.shape[0])
        return z + self.out(extra.to(z.dtype))


class TemporalMixer(nn.Module):
    """One temporal layer ``l_phi^i`` and its blend weight ``phi^i``: ``forward(z [B, C, F, H, W],
    frame_segments, extra) = mix_spatial_temporal(z, layer(z'), phi)`` with ``z' = context(z, extra)`` for a
    context model (:class:`ContextInput`), else ``z``."""

    def __init__(self, layer: nn.Module, alpha_init: float, context: Optional[ContextInput] = None) -> None:
        super().__init__()
        self.layer = layer
        self.mix_logit = nn.Parameter(torch.tensor(alpha_logit(alpha_init)))
        self.context = context

    @property
    def alpha(self) -> Tensor:
        return torch.sigmoid(self.mix_logit)

    def forward(self, z: Tensor, frame_segments: Optional[Tensor] = None, extra: Optional[Tensor] = None) -> Tensor:
        z_in = z if self.context is None or extra is None else self.context(z, extra)
        return mix_spatial_temporal(z, self.layer(z_in, frame_segments), self.mix_logit)


# ---- image bases ----------------------------------------------------------------------------------


class SpatialLayer(NamedTuple):
    """A spatial layer of an image base after which a temporal layer goes: the module, the kind of
    temporal layer (``conv`` after a residual block, ``attention`` after an attention layer), its
    output channels and whether its output is ``[(B F), C, H, W]`` (``frames_in_batch``) or
    ``[B, C, F, H, W]``."""

    module: nn.Module
    kind: Literal["conv", "attention"]
    channels: int
    frames_in_batch: bool


class KinemaImageBase(nn.Module):
    """kinema's own ``unet3d`` as an image model: ``forward(z [B, C, F, H, W], logsnr [B], cond)`` runs it with
    every frame in its own ``frame_segments`` segment, i.e. as an image model on each frame (the rest of
    ``cond`` passes through). Its spatial layers are its ``ResBlock`` s and ``SpatialAttention`` s."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if not isinstance(net, UNet3D):
            raise ValueError(f"model.video_ldm.base=kinema needs a unet3d image model, got a {type(net).__name__}")
        if net.cfg.gradient_checkpointing:  # recomputation would run without the per-call temporal hooks
            net.cfg = dataclasses.replace(net.cfg, gradient_checkpointing=False)
        self.net = net

    @property
    def spec(self) -> BackboneSpec:
        return self.net.spec

    def spatial_layers(self) -> list[SpatialLayer]:
        layers = []
        for m in self.net.modules():
            if isinstance(m, ResBlock):
                layers.append(SpatialLayer(m, "conv", m.out.out_channels, False))
            elif isinstance(m, SpatialAttention):
                layers.append(SpatialLayer(m, "attention", m.qkv.in_features, False))
        return layers

    def forward(self, z: Tensor, logsnr: Tensor, cond=None) -> Tensor:
        b, _, f = z.shape[:3]
        images = torch.arange(f, device=z.device).expand(b, f)  # [B, F]: every frame its own segment
        cond = with_fields(cond, frame_segments=images)
        return self.net(z, logsnr, cond)


def _diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("model.video_ldm.base=diffusers needs the optional extra: pip install 'kinema[diffusers]' "
                          "(diffusers)") from e
    return diffusers


def load_diffusers_unet(path: str | Path) -> nn.Module:
    """A ``UNet2DConditionModel`` from a LOCAL folder (``config.json`` + weights; nothing is downloaded).
    A folder that is not one is a ValueError naming it."""
    diffusers = _diffusers()
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise ValueError(f"model.video_ldm.base_path={str(path)!r} is not a diffusers UNet2DConditionModel folder "
                         f"(no config.json in {p}); give the local folder written by save_pretrained, e.g. a "
                         f"Stable Diffusion checkout's unet/ (kinema never downloads)")
    try:
        unet = diffusers.UNet2DConditionModel.from_pretrained(str(p), local_files_only=True, low_cpu_mem_usage=False)
    except Exception as e:  # wrong class in config.json, missing / corrupt weights
        raise ValueError(f"model.video_ldm.base_path={str(path)!r}: could not load a diffusers "
                         f"UNet2DConditionModel from {p}: {e}") from e
    return unet


class DiffusersImageBase(nn.Module):
    """A diffusers ``UNet2DConditionModel`` under the denoiser contract, frame by frame:
    ``forward(z [B, C, F, H, W], logsnr [B], cond)`` folds frames into the batch, maps log-SNR to the
    UNet's training timestep (:func:`logsnr_to_timestep`), gives its cross-attention ``cond.text_emb``
    (per frame) and returns the UNet's prediction ``[B, C, F, H, W]`` (its parameterization: epsilon for
    Stable Diffusion 1.x, v for 2.x; set ``diffusion.parameterization`` to match).

    Text: the encoder's tokens as they come (Stable Diffusion attends all 77, padding included); an
    item whose text is absent or fully masked (classifier-free guidance's null) gets all-zero tokens.
    Spatial layers: every ``ResnetBlock2D`` and ``Transformer2DModel`` in the down / mid / up blocks."""

    def __init__(self, unet: nn.Module, cfg: VideoLDMConfig) -> None:
        super().__init__()
        c = unet.config
        if getattr(c, "addition_embed_type", None) or getattr(c, "class_embed_type", None) or \
                getattr(c, "num_class_embeds", None):
            raise ValueError("model.video_ldm.base=diffusers supports UNet2DConditionModel without class or added "
                             "embeddings (Stable Diffusion 1.x / 2.x); this one has class_embed_type="
                             f"{c.class_embed_type!r}, addition_embed_type={c.addition_embed_type!r}")
        self.unet = unet
        self.register_buffer("alphas_cumprod", ddpm_alphas_cumprod(cfg.num_train_timesteps, cfg.beta_start,
                                                                   cfg.beta_end, cfg.beta_schedule).float(),
                             persistent=False)

    @property
    def spec(self) -> BackboneSpec:
        c = self.unet.config
        text_dim = c.cross_attention_dim if isinstance(c.cross_attention_dim, int) else c.cross_attention_dim[0]
        return BackboneSpec(in_channels=c.in_channels, out_channels=c.out_channels, text_dim=int(text_dim),
                            size_multiple=2 ** (len(c.block_out_channels) - 1), reads=("frame_segments", "text"))

    def spatial_layers(self) -> list[SpatialLayer]:
        diffusers = _diffusers()
        from diffusers.models.resnet import ResnetBlock2D

        layers = []
        blocks = [*self.unet.down_blocks, *([self.unet.mid_block] if self.unet.mid_block is not None else []),
                  *self.unet.up_blocks]
        for block in blocks:
            for m in block.modules():
                if isinstance(m, ResnetBlock2D):
                    layers.append(SpatialLayer(m, "conv", m.out_channels, True))
                elif isinstance(m, diffusers.Transformer2DModel):
                    layers.append(SpatialLayer(m, "attention", m.in_channels, True))
        return layers

    def forward(self, z: Tensor, logsnr: Tensor, cond=None) -> Tensor:
        b, c, f, h, w = z.shape
        text, mask = getattr(cond, "text_emb", None), getattr(cond, "text_mask", None)
        dim = self.spec.text_dim
        if text is None:
            text = z.new_zeros(b, 1, dim)
        elif mask is not None:  # a fully masked item (the null text) gets zero tokens
            text = text * mask.any(dim=1).to(text.dtype)[:, None, None]
        t = logsnr_to_timestep(logsnr.expand(b), self.alphas_cumprod).float()  # [B] (float32 under autocast too)
        frames = rearrange(z, "b c f h w -> (b f) c h w")
        out = self.unet(frames, t.repeat_interleave(f), encoder_hidden_states=text.to(z.dtype).repeat_interleave(f, 0),
                        return_dict=False)[0]  # [(B F), C, H, W]
        return rearrange(out, "(b f) c h w -> b c f h w", b=b)


def load_image_base(cfg: VideoLDMConfig) -> tuple[nn.Module, str]:
    """(the image base of ``cfg`` wrapped for :class:`VideoLDM`, the resolved local path it came from)."""
    if not cfg.base_path:
        raise ValueError("model.video_ldm.base_path is empty: give the local path of the image model (a kinema "
                         "checkpoint / run directory for base=kinema, a diffusers UNet folder for base=diffusers)")
    if cfg.base == "diffusers":
        path = Path(cfg.base_path).expanduser().resolve()
        return DiffusersImageBase(load_diffusers_unet(path), cfg), str(path)
    # A kinema checkpoint needs the config and checkpoint layers above models/: the one upward
    # reference, taken lazily (see docs/architecture.md, "Video LDM").
    from kinema.system import load_system

    system, ckpt = load_system(cfg.base_path, ema=True, device="cpu")
    net = system.model
    if isinstance(net, TextConditioned):
        if isinstance(net.encoder(), nn.Module):
            raise ValueError(f"the image model {ckpt} was trained with model.text.encoder=builtin, whose weights "
                             f"belong to that checkpoint; a video LDM on a kinema base supports "
                             f"model.text.encoder=none or transformers")
        net = net.net
    return KinemaImageBase(net), str(ckpt.resolve())


# ---- the video model ------------------------------------------------------------------------------


def _drop_base_tensors(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook of :class:`VideoLDM`: the frozen base is not saved (it is a frozen part)."""
    for key in [k for k in state_dict if k.startswith(prefix + "base.")]:
        del state_dict[key]


def _fill_base_tensors(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook of :class:`VideoLDM`: the base keeps its own (frozen) tensors."""
    for key, value in module.base.state_dict().items():
        state_dict.setdefault(prefix + "base." + key, value)


class VideoLDM(nn.Module):
    """A frozen image model plus temporal layers (see the module docstring):
    ``forward(z [B, C, F, H, W], logsnr [B], cond) -> [B, C_out, F, H, W]`` under the denoiser contract.

    ``base`` (default: loaded from ``cfg.base`` / ``cfg.base_path``) is an image base
    (:class:`KinemaImageBase`, :class:`DiffusersImageBase`); ``source`` the path it came from. The base
    is frozen and excluded from ``state_dict``; ``temporal`` holds one :class:`TemporalMixer` per spatial
    layer (in the base's module order)."""

    def __init__(self, cfg: VideoLDMConfig, base: Optional[nn.Module] = None, source: Optional[str] = None) -> None:
        super().__init__()
        self.cfg = cfg
        if base is None:
            base, source = load_image_base(cfg)
        if source is None:
            raise ValueError("VideoLDM: a base given directly needs its source path (the frozen part is recorded by "
                             "path and sha256)")
        self.source = source
        self.base = base.requires_grad_(False).eval()
        self.spatial = [layer for layer in base.spatial_layers()
                        if (cfg.temporal_conv if layer.kind == "conv" else cfg.temporal_attention)]
        if not self.spatial:
            raise ValueError(f"the image model has no layer to put the selected temporal layers after "
                             f"(temporal_attention={cfg.temporal_attention}, temporal_conv={cfg.temporal_conv})")
        extra = cfg.extra_in_channels
        self.temporal = nn.ModuleList(
            TemporalMixer(self._temporal_layer(s), cfg.alpha_init, ContextInput(extra, s.channels) if extra else None)
            for s in self.spatial)
        zero_init_residual_outputs(self.temporal)  # the one init decision: every temporal branch starts as identity
        self.register_state_dict_post_hook(_drop_base_tensors)
        self.register_load_state_dict_pre_hook(_fill_base_tensors)

    def _temporal_layer(self, layer: SpatialLayer) -> nn.Module:
        cfg = self.cfg
        if layer.kind == "attention":
            return FrameAttention(layer.channels, cfg.head_dim, cfg.norm_groups)
        return Conv3DBlock(layer.channels, 3 if cfg.conv_kernel == "3x3x3" else 1, cfg.norm_groups)

    @property
    def spec(self) -> BackboneSpec:
        base = self.base.spec
        context = ("context",) if self.cfg.extra_in_channels else ()
        reads = tuple(dict.fromkeys(("frame_segments",) + base.reads + context))
        return dataclasses.replace(base, reads=reads, extra_in_channels=self.cfg.extra_in_channels)

    def frozen_parts(self) -> dict[str, tuple[nn.Module, str]]:
        """name -> (module, local source path) of the frozen parts inside this model (the image base)."""
        return {BASE: (self.base, self.source)}

    def train(self, mode: bool = True) -> "VideoLDM":
        super().train(mode)
        self.base.eval()  # frozen: no dropout, whatever the mode of the temporal layers
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _mix_hook(self, index: int, frames: int, segments: Optional[Tensor], extra: Optional[Tensor], module, args,
                  output):
        """Forward hook on spatial layer ``index``: its output ``z`` (a tensor, or a tuple whose first item is
        one, as diffusers' ``Transformer2DModel(..., return_dict=False)`` returns) -> the temporal blend
        (``extra [B, E, F, H, W]``: the channels from ``cond`` of a context model, else None)."""
        z = output[0] if isinstance(output, tuple) else output
        if self.spatial[index].frames_in_batch:  # [(B F), C, H, W] -> [B, C, F, H, W] and back
            video = rearrange(z, "(b f) c h w -> b c f h w", f=frames)
            mixed = rearrange(self.temporal[index](video, segments, extra), "b c f h w -> (b f) c h w")
        else:
            mixed = self.temporal[index](z, segments, extra)
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

    def forward(self, z: Tensor, logsnr: Tensor, cond=None) -> Tensor:
        if z.ndim != 5:
            raise ValueError(f"VideoLDM expects z of shape [B, C, F, H, W], got {tuple(z.shape)}")
        segments = getattr(cond, "frame_segments", None)
        if segments is not None and tuple(segments.shape) != (z.shape[0], z.shape[2]):
            raise ValueError(f"cond.frame_segments must have shape [B, F] = {[z.shape[0], z.shape[2]]}, "
                             f"got {tuple(segments.shape)}")
        segments = None if segments is None else segments.to(z.device)
        extra = conditioning_channels(z, cond, self.cfg.extra_in_channels, "video_ldm")  # [B, E, F, H, W] or None
        hooks = [layer.module.register_forward_hook(partial(self._mix_hook, i, z.shape[2], segments, extra))
                 for i, layer in enumerate(self.spatial)]
        try:
            return self.base(z, logsnr, cond)
        finally:
            for handle in hooks:
                handle.remove()


__all__ = ["BASE", "ContextInput", "Conv3DBlock", "DiffusersImageBase", "FrameAttention", "IMAGE_BASES", "KinemaImageBase",
           "SpatialLayer", "TemporalMixer", "VideoLDM", "VideoLDMConfig", "alpha_logit", "ddpm_alphas_cumprod",
           "load_diffusers_unet", "load_image_base", "logsnr_to_timestep", "mix_spatial_temporal"]
