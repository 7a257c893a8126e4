"""Temporal interpolation to a higher frame rate (Video LDM, Blattmann et al. 2023, section 3.2).

An interpolation model is a context model trained with every k-th frame of its window known
(``train.context.key_every = k``; Video LDM's k = 4: "predict three frames between two given key
frames", a T -> 4T model) through the same masking-conditioning as the prediction model (section
3.1.2). Given T key frames, :func:`interpolate_video` returns ``1 + k (T - 1)`` frames: key frame i
at position ``k i`` and ``k - 1`` generated frames between each pair (nothing after the last key
frame, so with k = 4, T key frames give 4T - 3 frames).

The model's window holds ``W = 1 + k m`` frames (its training length), i.e. m + 1 key frames. Windows
start at key frames 0, m, 2m, ... and share their end key frame with the next window; the last
window is shifted back so that it ends at the last key frame, and keeps only the frames the windows
before it did not make (:func:`interpolation_windows`). Input shorter than one window runs as one
shorter window. Only one window is on the device at a time.

Frames are counted in the model's space: pixels, or the latents of a frame-wise autoencoder (latent
frame i is pixel frame i; :func:`~kinema.pipelines.extend.require_framewise`). A latent model encodes the
key frames and decodes the result at the edge, so the output's key frames are the input's
encode -> decode; a pixel model's are the input frames themselves.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from kinema.conditioning import Conditioning
from kinema.diffusion.context import key_frame_mask
from kinema.pipelines.extend import as_batch, conditional_denoiser, decode_frames, require_framewise
from kinema.pipelines.sample import SamplerSettings
from kinema.system import System


def interpolation_factor(system: System) -> int:
    """k of an interpolation model (``train.context.key_every``), or a ValueError naming the fix."""
    k = system.cfg.train.context.key_every
    if k < 2:
        how = (f"a prediction model (train.context.max_frames={system.cfg.train.context.max_frames}); use it with "
               f"`kinema extend`" if system.is_context_model else "not a context model")
        raise ValueError(f"this model was not trained for interpolation ({how}); train one with "
                         f"train.context.key_every=4 (e.g. the video_ldm_interp_bouncing_shapes preset)")
    return k


def interpolation_windows(keys: int, per_window: int) -> list[tuple[int, int]]:
    """The windows that interpolate ``keys`` key frames with a model that takes ``per_window + 1`` key
    frames per window: ``(first key frame, new key intervals)`` per window, in order. Windows start at
    key frames 0, m, 2m, ... (m = ``per_window``); the last one starts at ``keys - 1 - m`` and makes only
    its last ``new`` intervals. A single window covers everything when ``keys - 1 <= m``."""
    if keys < 2:
        raise ValueError(f"interpolation needs at least 2 key frames, got {keys}")
    if per_window < 1:
        raise ValueError(f"a window needs at least 2 key frames, got {per_window + 1}")
    windows, done = [], 0  # done: key intervals made so far
    while done < keys - 1:
        start = min(done, max(0, keys - 1 - per_window))
        windows.append((start, min(start + per_window, keys - 1) - done))
        done = min(start + per_window, keys - 1)
    return windows


def interpolate_video(system: System, video: Tensor, *, guidance: Optional[float] = None,
                      cond: Optional[Conditioning] = None, steps: Optional[int] = None, sampler: Optional[str] = None,
                      eta: Optional[float] = None, seed: int = 0, precision: str = "auto",
                      progress: bool = True) -> Tensor:
    """Interpolate ``video [B, C, T, H, W]`` (or ``[C, T, H, W]``) in [-1, 1], its T frames the key frames,
    to ``1 + k (T - 1)`` frames with the interpolation model ``system`` (see the module docstring).

    ``guidance``: classifier-free weight over the key frames (and ``cond``'s text / labels), the null being
    no known frame (default ``sample.guidance``). Returns float32 ``[B, C, 1 + k (T - 1), H, W]`` on CPU.
    Reproducible given ``seed``."""
    k = interpolation_factor(system)
    require_framewise(system, "interpolate")
    video = as_batch(video, system, "video")
    keys = video.shape[2]
    window = system.space.frames  # 1 + k m: checked when the model was built
    plan = interpolation_windows(keys, (window - 1) // k)
    guidance = system.cfg.sample.guidance if guidance is None else guidance
    run = SamplerSettings.from_system(system, steps=steps, sampler=sampler, eta=eta)
    device = system.device
    generator = torch.Generator(device).manual_seed(seed)
    cond = cond.to(device) if cond is not None else None
    z_keys = system.space.encode(video.to(device, torch.float32))  # [B, C', T, h, w]
    b, c, _, h, w = z_keys.shape
    out = torch.zeros(b, c, 1 + k * (keys - 1), h, w)  # model-space frames, on CPU
    out[:, :, 0] = z_keys[:, :, 0].cpu()
    bar = tqdm(total=len(plan) * run.steps, desc=f"interpolate ({len(plan)} windows)", unit="step",
               disable=not progress)
    with torch.inference_mode():
        for start, new in plan:
            span = min((window - 1) // k, keys - 1 - start)  # key intervals in this window
            frames = 1 + k * span
            system.space.shape(frames)  # a shorter (single) window must fit the backbone too
            known = key_frame_mask(frames, k, device)[None].expand(b, frames)  # [B, frames]
            x_a = z_keys.new_zeros(b, c, frames, h, w)
            x_a[:, :, ::k] = z_keys[:, :, start:start + span + 1]
            denoise = conditional_denoiser(system, "context", x_a, known, guidance=guidance, generator=generator,
                                           precision=precision, cond=cond)
            z = run.initial(x_a.shape, generator, device)
            sample = run(denoise, z, generator=generator, callback=lambda *a: bar.update(1)).float()
            first = k * (start + span - new)  # the frames before it were made by earlier windows
            out[:, :, first:k * (start + span) + 1] = sample[:, :, first - k * start:].cpu()
    bar.close()
    out[:, :, ::k] = z_keys.cpu()  # the key frames exactly (replacement keeps them; this makes it explicit)
    return decode_frames(system, out, window)


__all__ = ["interpolate_video", "interpolation_factor", "interpolation_windows"]
