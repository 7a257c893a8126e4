"""Long videos: autoregressive temporal extension (VDM, Ho et al. 2022, sections 3.1 and 4.3).

A model trained on windows of W frames makes a video of any length N: each new window keeps the
last K generated frames (the overlap) as known frames x^a and samples the W - K frames after them,
x^b, conditioned on x^a by one of three methods:

- ``reconstruction``: reconstruction guidance (VDM eq. 7) on an unconditional model, with the known
  part of z drawn from q(z_t | x^a) as VDM does;
- ``replacement``: the replacement method alone (VDM section 3.1);
- ``context``: a context-conditioned (prediction) model that gets x^a through
  ``Conditioning.context`` (``train.context``), optionally with classifier-free guidance over the
  context (weight w, the null being no known frame).

A text- or class-conditional model is extended under the same conditioning as ``kinema sample``
(``cond`` with prompts / labels, classifier-free guidance weight ``guidance``), kept apart from the
reconstruction weight w_r (``recon_weight``). Windows are sampled in the system's space (decoded at
the end), so the pipeline does not assume pixels.

Only one window of W frames is ever on the device: memory is independent of N. The output keeps the
input frames unchanged and appends the generated ones, exactly N frames in all.

Latent models (Video LDM's prediction model, Blattmann et al. 2023 section 3.1.2) extend in latent
frames: the input is encoded, the known frames of each window are latent frames and the generated
latents are decoded at the edge, window by window. With a frame-wise autoencoder (``temporal_factor``
1, Video LDM's image autoencoder) latent frame i is pixel frame i, so every count given in pixel frames
(``frames``, ``window``, ``overlap``) is the same count of latent frames, and the output's first F0
frames are the input's encode -> decode. A temporally compressing autoencoder (W.A.L.T's causal one) is
refused (:func:`require_framewise`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from kinema.conditioning import LABEL_FIELDS, Conditioning, drop_conditioning, with_context
from kinema.diffusion.context import key_frame_mask
from kinema.diffusion.guidance import frame_selection, guided_denoiser, reconstruction_guidance, replacement
from kinema.pipelines.sample import SamplerSettings, apply_guidance, autocast_denoiser, complete_context, labelled
from kinema.resize import resize_video
from kinema.system import System

METHODS = ("reconstruction", "replacement", "context")
DEFAULT_RECON_WEIGHT = 5.0  # w_r of reconstruction guidance for extension (tuned on the exact-Gaussian test)


def read_clip(path: str | Path, channels: int, size: Optional[int] = None, max_frames: Optional[int] = None) -> Tensor:
    """A video file as ``[1, C, F, H, W]`` in [-1, 1] with ``channels`` (1: grayscale, the mean of RGB;
    3: RGB), resized to ``size x size`` (antialiased bilinear) when ``size`` is given and differs."""
    from kinema.data.io import from_uint8, read_video

    video = from_uint8(read_video(path, max_frames=max_frames))[None]  # [1, 3, F, H, W]
    if channels == 1:
        video = video.mean(dim=1, keepdim=True)
    elif channels != 3:
        raise ValueError(f"cannot read a video for a model with {channels} channels (1 or 3 supported)")
    if size is not None:
        video = resize_video(video, size).clamp(-1, 1)
    return video


def as_batch(video: Tensor, system: System, what: str = "video") -> Tensor:
    """``[C, F, H, W]`` or ``[B, C, F, H, W]`` -> ``[B, C, F, H, W]``, checked against the model's channels."""
    if video.ndim == 4:
        video = video[None]
    if video.ndim != 5:
        raise ValueError(f"expected a {what} [B, C, F, H, W], got shape {tuple(video.shape)}")
    system.space.check_channels(video.shape[1], f"the {what} (shape {tuple(video.shape)})")
    return video


def require_framewise(system: System, what: str) -> None:
    """Frame-conditional pipelines (extend, interpolate) count known and generated frames in the model's
    space, given in pixel frames. That is exact for pixels and for the latents of a frame-wise autoencoder
    (``temporal_factor`` 1: latent frame i is pixel frame i). A causal autoencoder with
    ``temporal_factor`` > 1 is refused: its first latent frame encodes one frame and every later one
    ``temporal_factor`` frames, so a window cut from a longer video's latents is not a clip it encodes."""
    tf = system.space.temporal_factor
    if tf != 1:
        raise ValueError(f"{what} needs a model in pixels or on a frame-wise autoencoder (temporal_factor 1); this "
                         f"model's autoencoder {system.cfg.model.autoencoder} has temporal_factor {tf}, whose first latent "
                         f"frame encodes 1 frame and the others {tf}, so windows of its latents do not map to frames. "
                         f"Use a model on a frame-wise autoencoder (e.g. model.causal_ae.temporal_factor=1) or a pixel "
                         f"model")


def decode_frames(system: System, z: Tensor, chunk: int) -> Tensor:
    """The model-space video ``z [B, C, F, H, W]`` (any device) decoded to float32 pixels on CPU, ``chunk``
    frames at a time on the model's device (a frame-wise space decodes each frame on its own, so chunks
    are exact), so the device never holds more than ``chunk`` decoded frames."""
    if system.space.temporal_factor != 1:
        raise ValueError("decode_frames decodes frame-wise spaces only (temporal_factor 1)")
    device = system.device
    return torch.cat([system.space.decode(part.to(device)).cpu() for part in z.split(max(1, chunk), dim=2)], dim=2)


def require_pixel_space(system: System, what: str) -> None:
    """Frame-conditional pipelines count frames and read clips in the model's own space: refuse a latent
    model until window / overlap / frame counts are mapped to latent frames."""
    if system.space.name != "pixel":
        raise ValueError(f"{what} works on pixel-space models only for now; this model runs in the "
                         f"{system.space.name} space (model.space={system.cfg.model.space})")


def window_plan(have: int, total: int, window: int, overlap: int) -> list[int]:
    """How many new frames each window makes, going from ``have`` frames to ``total`` with windows of
    ``window`` frames whose first ``overlap`` frames are known: ``ceil((total - have) / (window -
    overlap))`` windows of ``window - overlap`` new frames (the last one may be shorter)."""
    if not 1 <= overlap < window:
        raise ValueError(f"overlap must be in [1, window - 1] = [1, {window - 1}], got {overlap}")
    if have < overlap:
        raise ValueError(f"the input has {have} frames, fewer than the overlap of {overlap}")
    if total <= have:
        raise ValueError(f"the target length ({total} frames) must exceed the input's {have} frames")
    step = window - overlap
    return [min(step, total - have - i * step) for i in range(math.ceil((total - have) / step))]


def conditional_denoiser(system: System, method: str, x_a: Tensor, known: Tensor, *, guidance: float = 0.0,
                         recon_weight: float = DEFAULT_RECON_WEIGHT, generator: Optional[torch.Generator] = None,
                         precision: str = "auto", cond: Optional[Conditioning] = None):
    """A sampler-ready ``denoise(z, logsnr)`` for sampling the frames of ``x_a [B, C, F, H, W]`` where
    ``known [B, F]`` is False, given those where it is True, by ``method`` (see the module
    docstring). ``guidance`` is the classifier-free weight (over ``cond``'s text / labels, and for
    ``context`` over the known frames too); ``recon_weight`` is w_r of reconstruction guidance.
    Every method also overwrites the known part of z (replacement), so the sample keeps x^a there."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    with_amp = autocast_denoiser(system, precision)
    if method == "context":
        check_known_frames(system, known)
        c = with_context(cond, x_a, known)
        fields = ("context",) + (LABEL_FIELDS if labelled(c) else ())
        denoise = guided_denoiser(with_amp, c, drop_conditioning(c, fields=fields), guidance)
    else:
        denoise = apply_guidance(system, with_amp, complete_context(system, cond, x_a), guidance)
        if method == "reconstruction" and recon_weight != 0:
            view = known[:, None, :, None, None].to(x_a.dtype)
            denoise = reconstruction_guidance(denoise, x_a * view, frame_selection(known), recon_weight,
                                              correct=~known)
    return with_amp.track(replacement(denoise, x_a, known, generator=generator, noise=system.noise))  # (self-conditioning state)


def check_known_frames(system: System, known: Tensor) -> None:
    """The known frames ``known [B, F]`` must be a pattern the context model was trained on: at most
    ``train.context.max_frames`` of them for a prediction model; exactly the key frames 0, k, 2k, ... for
    an interpolation model (``train.context.key_every = k``). One error naming the fix otherwise."""
    ctx = system.cfg.train.context
    if not ctx.enabled:
        raise ValueError("method 'context' needs a model trained with context frames (train.context.max_frames "
                         "> 0, e.g. the vdm_moving_digits_context preset); use reconstruction or replacement")
    if ctx.key_every:
        keys = key_frame_mask(known.shape[1], ctx.key_every, known.device)
        if not bool((known == keys).all()):
            raise ValueError(f"this model was trained for interpolation (train.context.key_every={ctx.key_every}: every "
                             f"{ctx.key_every}th frame known); use `kinema interpolate`, or a prediction model "
                             f"(train.context.max_frames > 0) to extend")
        return
    most = int(known.sum(1).max())
    if most > ctx.max_frames:
        raise ValueError(f"{most} known frames, but the model was trained with at most "
                         f"train.context.max_frames={ctx.max_frames}; lower the overlap")


def extend_video(system: System, video: Tensor, frames: int, *, method: str = "reconstruction",
                 overlap: Optional[int] = None, window: Optional[int] = None, guidance: Optional[float] = None,
                 recon_weight: Optional[float] = None, cond: Optional[Conditioning] = None,
                 steps: Optional[int] = None, sampler: Optional[str] = None, eta: Optional[float] = None,
                 seed: int = 0, precision: str = "auto", progress: bool = True) -> Tensor:
    """Extend ``video [B, C, F0, H, W]`` (or ``[C, F0, H, W]``) in [-1, 1] to exactly ``frames`` frames.

    ``window`` frames per model call (default: the training length), the last ``overlap`` of them
    known (default: half the window; for ``context`` at most ``train.context.max_frames``); a shorter last window is sampled at full length and cut.
    ``cond`` (``[B, ...]``, e.g. from ``make_conditioning``) conditions every window, with
    classifier-free weight ``guidance`` (default ``sample.guidance``); ``recon_weight`` is w_r
    (default :data:`DEFAULT_RECON_WEIGHT`). Returns float32 ``[B, C, frames, H, W]`` on CPU whose
    first F0 frames are the input (a latent model: the input's encode -> decode). Counts are pixel
    frames, which for the frame-wise spaces allowed (:func:`require_framewise`) are the model's frames.
    Reproducible given ``seed``.
    """
    require_framewise(system, "extend")
    video = as_batch(video, system, "video")
    window = window or system.space.frames
    if overlap is None:  # half the window, at most what a prediction model was trained with
        most = system.cfg.train.context.max_frames
        overlap = min(window // 2, most) if method == "context" and most else window // 2
    plan = window_plan(video.shape[2], frames, window, overlap)
    guidance = system.cfg.sample.guidance if guidance is None else guidance
    recon_weight = DEFAULT_RECON_WEIGHT if recon_weight is None else recon_weight
    run = SamplerSettings.from_system(system, steps=steps, sampler=sampler, eta=eta)
    device = system.device
    generator = torch.Generator(device).manual_seed(seed)
    if cond is not None:
        cond = cond.to(device)
    z_video = system.space.encode(video.to(device, torch.float32))
    out = [z_video.cpu()]
    tail = z_video[:, :, -overlap:]  # the known frames of the next window
    bar = tqdm(total=len(plan) * run.steps, desc=f"extend ({len(plan)} windows)", unit="step", disable=not progress)
    with torch.no_grad() if method == "reconstruction" else torch.inference_mode():
        for new in plan:  # every window has the full length (a shorter last one is cut afterwards)
            b, c, _, h, w = tail.shape
            x_a = torch.cat([tail, tail.new_zeros(b, c, window - overlap, h, w)], dim=2)  # [B, C, W, H, W]
            known = torch.zeros(b, window, dtype=torch.bool, device=device)
            known[:, :overlap] = True
            denoise = conditional_denoiser(system, method, x_a, known, guidance=guidance, recon_weight=recon_weight,
                                           generator=generator, precision=precision, cond=cond)
            z = run.initial(x_a.shape, generator, device)
            sample = run(denoise, z, generator=generator, callback=lambda *a: bar.update(1)).float()
            sample = sample[:, :, :overlap + new]  # [known tail, new frames]; the known part is kept exactly
            out.append(sample[:, :, overlap:].cpu())
            tail = sample[:, :, -overlap:]
    bar.close()
    return decode_frames(system, torch.cat(out, dim=2), window)
