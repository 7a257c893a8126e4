"""Video autoencoders behind one interface, and W.A.L.T's causal 3D convolutional KL autoencoder.

**The interface** (:class:`VideoAutoencoder`): ``encode(video) -> latents`` and ``decode(latents) ->
video`` on ``[B, C, F, H, W]`` videos in [-1, 1]; ``latent_channels``, ``spatial_factor``,
``temporal_factor``, ``scale_factor`` (multiply latents by it to get ~unit std) and
``latent_shape(frames, height, width)``, which names the fix when a shape cannot work. Latent
spaces (:mod:`kinema.spaces`) talk only to this interface, so an image autoencoder (temporal
factor 1, Video LDM) or an adapter around a diffusers ``AutoencoderKL`` can sit behind it.

**The causal 3D autoencoder** (:class:`CausalAE`; W.A.L.T, Gupta et al. 2023, section 3.1, which
builds on MAGVIT-v2's causal 3D CNN, Yu et al. 2023, section 3.2):

- every temporal convolution is padded on the *past* side only (:class:`CausalConv3d`), and
  normalization is per frame, so an output frame never depends on later input frames;
- the first frame is encoded on its own: each temporal downsampling (stride 2 in time) maps
  ``1 + 2k`` frames to ``1 + k``; with ``temporal_factor`` 4 (two stages) ``1 + 4k`` frames map to
  ``1 + k`` latent frames. Latent frame 0 sees frame 0 only, latent frame ``j >= 1`` frames up to
  ``4j`` (its *span* is ``4j - 3 .. 4j``). An image is a 1-frame video: images and videos share one
  latent space. ``temporal_factor`` 1 makes a frame-wise (image) autoencoder with temporal kernel 1;
- continuous latents from a diagonal Gaussian posterior (mean, log-variance) regularized by a KL
  term (Kingma & Welling 2014; the "KL-reg" autoencoder of Rombach et al. 2022, section 3);
- encode / decode run in chunks of ``chunk_frames`` latent frames with a cache of each causal
  convolution's past inputs, so long videos take bounded memory and give exactly what one pass
  gives (causality makes the past the only context a chunk needs).

Its ``latent_std`` buffer is a running estimate (momentum ``std_momentum``, updated by training
forwards like batch norm's statistics) of the std of the posterior means; ``scale_factor`` =
1 / ``latent_std`` and is saved with the weights. :func:`estimate_latent_std` measures it exactly
on given data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kinema.models.backbone import BackboneSpec
from kinema.models.blocks import group_norm

LOGVAR_RANGE = (-30.0, 20.0)  # clamp of the posterior log-variance (as in Rombach et al.'s KL autoencoder)

# ---- the interface -------------------------------------------------------------------------------


@runtime_checkable
class VideoAutoencoder(Protocol):
    """What latent spaces need from an autoencoder (see the module docstring)."""

    in_channels: int
    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    @property
    def scale_factor(self) -> float: ...

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]: ...

    def encode(self, video: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


# ---- shapes ----------------------------------------------------------------------------------------


def latent_frames(frames: int, temporal_factor: int) -> int:
    """Latent frames of a ``frames``-frame video: ``1 + (frames - 1) / temporal_factor`` (the first
    frame is encoded on its own; W.A.L.T section 3.1). Frames that are not ``1 + k * factor`` raise
    an error naming the nearest counts that work (trim or pad)."""
    if frames < 1:
        raise ValueError(f"frames={frames}: a video needs at least 1 frame")
    k, rest = divmod(frames - 1, temporal_factor)
    if rest:
        tf = temporal_factor
        raise ValueError(f"frames={frames} is not 1 + {tf}k: trim to {1 + k * tf} or pad to {1 + (k + 1) * tf}")
    return 1 + k


def latent_size(size: int, spatial_factor: int, what: str = "height") -> int:
    """``size / spatial_factor``, or an error naming the nearest sizes that divide."""
    if size < 1 or size % spatial_factor:
        low, high = (size // spatial_factor) * spatial_factor, (size // spatial_factor + 1) * spatial_factor
        raise ValueError(f"{what}={size} is not divisible by the spatial factor {spatial_factor}: crop to {low} or "
                         f"pad to {high}")
    return size // spatial_factor


def causal_latent_shape(frames: int, height: int, width: int, *, channels: int, spatial_factor: int,
                        temporal_factor: int) -> tuple[int, int, int, int]:
    """``(C, F', H', W')`` of the latents of a ``frames x height x width`` video."""
    return (channels, latent_frames(frames, temporal_factor), latent_size(height, spatial_factor, "height"),
            latent_size(width, spatial_factor, "width"))


def segment_runs(frame_segments: Optional[Tensor], frames: int) -> list[int]:
    """Lengths of the runs of equal consecutive ids in ``frame_segments [B, F]`` (joint image-video
    items: the video, then each image); ``[frames]`` when None. Every row must have the same layout."""
    if frame_segments is None:
        return [frames]
    if frame_segments.ndim != 2 or frame_segments.shape[1] != frames:
        raise ValueError(f"frame_segments must be [B, {frames}], got {tuple(frame_segments.shape)}")
    if not bool((frame_segments == frame_segments[:1]).all()):
        raise ValueError("the autoencoder needs the same frame_segments layout for every item of a batch")
    row = frame_segments[0].tolist()
    runs, start = [], 0
    for i in range(1, frames + 1):
        if i == frames or row[i] != row[start]:
            runs.append(i - start)
            start = i
    return runs


def latent_frame_segments(frame_segments: Tensor, temporal_factor: int) -> Tensor:
    """Pixel ``frame_segments [B, F]`` -> latent ``frame_segments [B, F']`` for a causal autoencoder of
    ``temporal_factor`` that encodes each run of equal ids on its own (W.A.L.T, Gupta et al. 2023,
    section 3.1: the first frame alone, then ``temporal_factor`` frames per latent frame): a run of
    ``1 + k tf`` frames (a joint item's clip) becomes ``1 + k`` latent frames with its id, an appended
    1-frame image exactly one latent frame with its own id. Every row must have the same layout (as the
    encoder needs); a run that is not ``1 + k tf`` frames is an error naming it and what would work.

    ``latent_frame_segments([[0]*9 + [1, 2]], 4) == [[0, 0, 0, 1, 2]]``."""
    if frame_segments.ndim != 2:
        raise ValueError(f"frame_segments must be [B, F], got {tuple(frame_segments.shape)}")
    runs = segment_runs(frame_segments, frame_segments.shape[1])
    starts = [sum(runs[:i]) for i in range(len(runs))]
    counts = []
    for start, n in zip(starts, runs):
        try:
            counts.append(latent_frames(n, temporal_factor))
        except ValueError as e:
            raise ValueError(f"the segment of frames {start}..{start + n - 1} (id {int(frame_segments[0, start])}) "
                             f"cannot be encoded on its own: {e}") from None
    ids = frame_segments[:, starts]  # [B, R]: one id per run
    repeats = torch.tensor(counts, device=frame_segments.device)
    return ids.repeat_interleave(repeats, dim=1, output_size=sum(counts))  # [B, F']


# ---- posterior --------------------------------------------------------------------------------------


def posterior_sample(mean: Tensor, logvar: Tensor, noise: Tensor) -> Tensor:
    """z = mean + exp(logvar / 2) * noise, noise ~ N(0, I): the reparameterization trick
    (Kingma & Welling 2014, section 2.4). Shapes equal (``[B, C, F, H, W]``)."""
    return mean + torch.exp(0.5 * logvar) * noise


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per element: 0.5 (mean^2 + exp(logvar) - 1 - logvar)
    (Kingma & Welling 2014, appendix B). Same shape as ``mean``."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)


# ---- layers -------------------------------------------------------------------------------------------

Cache = Optional[dict]  # streaming state of one encode / decode: module -> its past inputs (None: one pass)


class CausalConv3d(nn.Module):
    """3D convolution padded on the past side in time (MAGVIT-v2 section 3.2): output frame t sees
    input frames ``<= t * stride_t`` only. Without a cache the past of frame 0 is frame 0 repeated
    (an image looks like a still video); with one, the inputs a chunk's first outputs need are
    taken from the previous chunk (``padded[:, :, n_out * stride_t:]``), so chunks equal one pass.
    Spatial padding is symmetric (zeros)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (3, 3, 3),
                 stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        kt, kh, kw = kernel
        self.time_pad, self.time_stride = kt - 1, stride[0]
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=(0, kh // 2, kw // 2))

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:  # x [B, C, F, H, W]
        past = cache.get(self) if cache is not None else None
        if past is None:
            past = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
        padded = torch.cat([past, x], dim=2)  # [B, C, P + F, H, W]
        out = self.conv(padded)
        if cache is not None:  # a copy of the few frames kept, not a view that would keep all of `padded` alive
            cache[self] = padded[:, :, out.shape[2] * self.time_stride:].clone()
        return out


class CausalResBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1) skip; per-frame GroupNorm keeps causality."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int], norm_groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin, norm_groups), CausalConv3d(cin, cout, kernel)
        self.norm2, self.conv2 = group_norm(cout, norm_groups), CausalConv3d(cout, cout, kernel)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return self.skip(x) + h


class CausalDownsample(nn.Module):
    """Stride-2 causal convolution over H, W and (``time``) F: ``1 + 2k`` frames -> ``1 + k``."""

    def __init__(self, channels: int, kernel: tuple[int, int, int], time: bool) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, kernel, stride=(2 if time else 1, 2, 2))

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        return self.conv(x, cache)


def depth_to_time(x: Tensor, factor: int) -> Tensor:
    """``'b (c r) f h w -> b c (f r) h w'``: each frame's channel groups become ``factor`` frames."""
    b, cr, f, h, w = x.shape
    return x.view(b, cr // factor, factor, f, h, w).permute(0, 1, 3, 2, 4, 5).reshape(b, cr // factor, f * factor, h, w)


class CausalUpsample(nn.Module):
    """Inverse of :class:`CausalDownsample`. In time (``time``): a causal convolution to 2x channels,
    depth-to-time (frame f -> frames 2f, 2f + 1) and the first output frame dropped on the first
    chunk, so ``1 + k`` frames -> ``1 + 2k`` (MAGVIT-v2's decoder); then nearest 2x in H, W and a
    causal convolution."""

    def __init__(self, channels: int, kernel: tuple[int, int, int], time: bool) -> None:
        super().__init__()
        self.time_conv = CausalConv3d(channels, 2 * channels, kernel) if time else None
        self.conv = CausalConv3d(channels, channels, kernel)

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        if self.time_conv is not None:
            x = depth_to_time(self.time_conv(x, cache), 2)
            first = cache is None or self not in cache
            if cache is not None:
                cache[self] = True
            if first:
                x = x[:, :, 1:]
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        return self.conv(x, cache)


# ---- the model ----------------------------------------------------------------------------------------


@dataclass
class CausalAEConfig:
    """Configuration of :class:`CausalAE` (section ``model.causal_ae``). Level i has
    ``width * min(2^i, 4)`` channels; there are ``log2(spatial_factor)`` down/upsampling stages, the
    first ``log2(temporal_factor)`` of which also halve / double time."""

    in_channels: int = 3
    latent_channels: int = 4
    width: int = 64
    num_res_blocks: int = 2
    spatial_factor: int = 8  # power of 2
    temporal_factor: int = 4  # power of 2, <= spatial_factor; 1: frame-wise (an image autoencoder)
    norm_groups: int = 32
    chunk_frames: int = 4  # latent frames per chunk of encode / decode (0: one pass)
    std_momentum: float = 0.01  # running estimate of the latents' std (-> scale_factor)

    def __post_init__(self) -> None:
        for name in ("in_channels", "latent_channels", "width", "num_res_blocks", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"CausalAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("spatial_factor", "temporal_factor"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"CausalAEConfig.{name} must be a power of 2, got {value}")
        if self.spatial_factor < 2 or self.temporal_factor > self.spatial_factor:
            raise ValueError(f"CausalAEConfig needs 2 <= spatial_factor and temporal_factor <= spatial_factor, got "
                             f"spatial_factor={self.spatial_factor}, temporal_factor={self.temporal_factor}")
        if self.chunk_frames < 0:
            raise ValueError(f"CausalAEConfig.chunk_frames must be >= 0, got {self.chunk_frames}")
        if not 0.0 < self.std_momentum <= 1.0:
            raise ValueError(f"CausalAEConfig.std_momentum must be in (0, 1], got {self.std_momentum}")

    @property
    def level_channels(self) -> list[int]:
        return [self.width * min(2 ** i, 4) for i in range(int(math.log2(self.spatial_factor)) + 1)]

    @property
    def kernel(self) -> tuple[int, int, int]:
        return (3 if self.temporal_factor > 1 else 1, 3, 3)


class AutoencoderOutput(NamedTuple):
    recon: Tensor  # [B, C, F, H, W], the decoded (sampled or mean) latents
    mean: Tensor  # [B, Cl, F', H', W'] posterior mean
    logvar: Tensor  # [B, Cl, F', H', W'] posterior log-variance


def check_video_input(ae, video: Tensor) -> None:
    """A ValueError unless ``video`` is ``[B, ae.in_channels, F, H, W]`` (the input of a VideoAutoencoder's encoder)."""
    if video.ndim != 5 or video.shape[1] != ae.in_channels:
        raise ValueError(f"the autoencoder takes [B, {ae.in_channels}, F, H, W] videos, got {tuple(video.shape)}")


def check_latent_input(ae, latents: Tensor) -> None:
    """A ValueError unless ``latents`` is ``[B, ae.latent_channels, F, H, W]`` (the input of its decoder)."""
    if latents.ndim != 5 or latents.shape[1] != ae.latent_channels:
        raise ValueError(f"the autoencoder decodes [B, {ae.latent_channels}, F, H, W] latents, got "
                         f"{tuple(latents.shape)}")


def resolve_chunk(default: int, chunk_frames: Optional[int]) -> int:
    """The frames per chunk of an encode / decode call: ``chunk_frames``, or ``default`` when None; >= 0 (0: one pass)."""
    c = default if chunk_frames is None else chunk_frames
    if c < 0:
        raise ValueError(f"chunk_frames must be >= 0 (0: one pass), got {c}")
    return c


def encode_decode_runs(posterior, decode, video: Tensor, runs: Sequence[int],
                       noise: Optional[Tensor]) -> AutoencoderOutput:
    """The training pass of a KL autoencoder over a video split into ``runs`` of frames (a joint item's
    clip, then each image): each run encoded on its own by ``posterior(part) -> (mean, logvar)``, the
    latents concatenated along time (``noise`` of their shape samples the posterior; None: the mean),
    and decoded run by run by ``decode(latents)``."""
    posteriors = [posterior(part) for part in video.split(list(runs), dim=2)]
    mean = torch.cat([m for m, _ in posteriors], dim=2)
    logvar = torch.cat([v for _, v in posteriors], dim=2)
    if noise is not None and noise.shape != mean.shape:
        raise ValueError(f"noise must have the latents' shape {tuple(mean.shape)}, got {tuple(noise.shape)}")
    z = mean if noise is None else posterior_sample(mean, logvar, noise)
    recon = torch.cat([decode(part) for part in z.split([m.shape[2] for m, _ in posteriors], dim=2)], dim=2)
    return AutoencoderOutput(recon, mean, logvar)


class CausalEncoder(nn.Module):
    def __init__(self, cfg: CausalAEConfig) -> None:
        super().__init__()
        chs, k, g = cfg.level_channels, cfg.kernel, cfg.norm_groups
        time_stages = int(math.log2(cfg.temporal_factor))
        self.conv_in = CausalConv3d(cfg.in_channels, chs[0], k)
        layers, prev = [], chs[0]
        for i, ch in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                layers.append(CausalResBlock(prev, ch, k, g))
                prev = ch
            if i < len(chs) - 1:
                layers.append(CausalDownsample(ch, k, time=i < time_stages))
        layers.append(CausalResBlock(prev, prev, k, g))  # middle
        self.layers = nn.ModuleList(layers)
        self.norm_out = group_norm(prev, g)
        self.conv_out = CausalConv3d(prev, 2 * cfg.latent_channels, k)

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:  # [B, C, F, H, W] -> [B, 2 Cl, F', H', W']
        h = self.conv_in(x, cache)
        for layer in self.layers:
            h = layer(h, cache)
        return self.conv_out(F.silu(self.norm_out(h)), cache)


class CausalDecoder(nn.Module):
    def __init__(self, cfg: CausalAEConfig) -> None:
        super().__init__()
        chs, k, g = cfg.level_channels, cfg.kernel, cfg.norm_groups
        time_stages = int(math.log2(cfg.temporal_factor))
        prev = chs[-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, prev, k)
        layers = [CausalResBlock(prev, prev, k, g)]  # middle
        for i in reversed(range(len(chs))):
            for _ in range(cfg.num_res_blocks):
                layers.append(CausalResBlock(prev, chs[i], k, g))
                prev = chs[i]
            if i > 0:
                layers.append(CausalUpsample(prev, k, time=i - 1 < time_stages))
        self.layers = nn.ModuleList(layers)
        self.norm_out = group_norm(prev, g)
        self.conv_out = CausalConv3d(prev, cfg.in_channels, k)

    def forward(self, z: Tensor, cache: Cache = None) -> Tensor:  # [B, Cl, F', H', W'] -> [B, C, F, H, W]
        h = self.conv_in(z, cache)
        for layer in self.layers:
            h = layer(h, cache)
        return self.conv_out(F.silu(self.norm_out(h)), cache)


class CausalAE(nn.Module):
    """W.A.L.T's causal 3D convolutional KL autoencoder (see the module docstring); a
    :class:`VideoAutoencoder`.

    ``forward(video, noise=None, frame_segments=None)`` is the training pass: each run of equal
    ``frame_segments`` (a joint item's video, then each image) is encoded on its own, the latents
    of all runs are concatenated along time (``noise`` of that shape samples the posterior; None
    uses its mean) and decoded run by run. ``encode`` / ``decode`` are the chunked, deterministic
    inference paths (posterior mean, no scaling).
    """

    def __init__(self, cfg: CausalAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_channels, self.latent_channels = cfg.in_channels, cfg.latent_channels
        self.spatial_factor, self.temporal_factor = cfg.spatial_factor, cfg.temporal_factor
        self.encoder, self.decoder = CausalEncoder(cfg), CausalDecoder(cfg)
        self.register_buffer("latent_std", torch.ones(()))

    @property
    def spec(self) -> BackboneSpec:
        """What it consumes and gives back (videos of ``in_channels``, sizes divisible by the spatial
        factor); frame counts are checked by :meth:`latent_shape`."""
        return BackboneSpec(in_channels=self.in_channels, out_channels=self.in_channels,
                            size_multiple=self.spatial_factor, reads=("frame_segments",))

    @property
    def scale_factor(self) -> float:
        """Multiply latents by this to get ~unit std (1 / the running std of the posterior means)."""
        return float(1.0 / self.latent_std.clamp_min(1e-8))

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return causal_latent_shape(frames, height, width, channels=self.latent_channels,
                                   spatial_factor=self.spatial_factor, temporal_factor=self.temporal_factor)

    def last_layer_weight(self) -> Tensor:
        """The decoder's last layer (for VQGAN's adaptive weight of an adversarial term)."""
        return self.decoder.conv_out.conv.weight

    def _check(self, video: Tensor) -> None:
        check_video_input(self, video)
        self.latent_shape(*video.shape[2:])

    def posterior(self, video: Tensor, cache: Cache = None) -> tuple[Tensor, Tensor]:
        """(mean, logvar) ``[B, Cl, F', H', W']`` of one run (a video or a 1-frame image)."""
        mean, logvar = self.encoder(video, cache).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def forward(self, video: Tensor, noise: Optional[Tensor] = None,
                frame_segments: Optional[Tensor] = None) -> AutoencoderOutput:
        runs = segment_runs(frame_segments, video.shape[2])
        for n in runs:
            self.latent_shape(n, *video.shape[3:])  # every run must be 1 + k * temporal_factor frames
        self._check(video[:, :, :runs[0]])
        recon, mean, logvar = encode_decode_runs(self.posterior, self.decoder, video, runs, noise)
        if self.training:
            self._update_latent_std(mean)
        return AutoencoderOutput(recon, mean, logvar)

    @torch.no_grad()
    def _update_latent_std(self, mean: Tensor) -> None:
        self.latent_std.lerp_(mean.detach().std().to(self.latent_std.dtype), self.cfg.std_momentum)

    def encode(self, video: Tensor, chunk_frames: Optional[int] = None) -> Tensor:
        """Posterior means ``[B, Cl, F', H', W']`` of ``video [B, C, F, H, W]`` in [-1, 1] (unscaled), in
        chunks of ``chunk_frames`` latent frames (default ``cfg.chunk_frames``; 0: one pass). Chunks
        are pixel frames ``[0, 1 + tf (c - 1))`` then ``tf c`` at a time, with the causal cache."""
        self._check(video)
        c = resolve_chunk(self.cfg.chunk_frames, chunk_frames)
        if c == 0:
            return self.posterior(video)[0]
        tf, cache = self.temporal_factor, {}
        bounds = [0, min(video.shape[2], 1 + tf * (c - 1))]
        while bounds[-1] < video.shape[2]:
            bounds.append(min(video.shape[2], bounds[-1] + tf * c))
        return torch.cat([self.posterior(video[:, :, a:b], cache)[0] for a, b in zip(bounds, bounds[1:])], dim=2)

    def decode(self, latents: Tensor, chunk_frames: Optional[int] = None) -> Tensor:
        """Videos ``[B, C, 1 + tf (F' - 1), H' sf, W' sf]`` from unscaled latents ``[B, Cl, F', H', W']``, in
        chunks of ``chunk_frames`` latent frames (default ``cfg.chunk_frames``; 0: one pass)."""
        check_latent_input(self, latents)
        c = resolve_chunk(self.cfg.chunk_frames, chunk_frames)
        if c == 0:
            return self.decoder(latents)
        cache: dict = {}
        out, start = None, 0
        for part in latents.split(c, dim=2):  # each chunk into one preallocated output (no list + cat: 1x, not 2x)
            video = self.decoder(part, cache)
            if out is None:
                frames = 1 + self.temporal_factor * (latents.shape[2] - 1)
                out = video.new_empty(*video.shape[:2], frames, *video.shape[3:])
            out[:, :, start:start + video.shape[2]] = video
            start += video.shape[2]
        return out


@torch.no_grad()
def estimate_latent_std(ae: CausalAE, videos: Sequence[Tensor]) -> float:
    """The std of the posterior means of ``videos`` (each ``[B, C, F, H, W]``), pooled over all
    elements; set ``ae.latent_std`` to it to make ``scale_factor`` exact for that data (the scale
    of Rombach et al. 2022, section 4.3.2 / appendix: 1 / std of the latents)."""
    total, total_sq, count = 0.0, 0.0, 0
    for video in videos:
        m = ae.encode(video).double()
        total, total_sq, count = total + m.sum().item(), total_sq + m.square().sum().item(), count + m.numel()
    if count == 0:
        raise ValueError("estimate_latent_std needs at least one video")
    mean = total / count
    return math.sqrt(max(total_sq / count - mean * mean, 0.0))


__all__ = ["AutoencoderOutput", "CausalAE", "CausalAEConfig", "CausalConv3d", "VideoAutoencoder",
           "causal_latent_shape", "check_latent_input", "check_video_input", "depth_to_time", "encode_decode_runs", "estimate_latent_std", "kl_divergence", "latent_frame_segments",
           "latent_frames", "latent_size", "posterior_sample", "resolve_chunk", "segment_runs"]
