"""A diffusers ``AutoencoderKL`` from a local folder behind kinema's :class:`VideoAutoencoder` interface.

Video LDM (Blattmann et al. 2023, section 3) runs diffusion in the latent space of a frozen *image*
autoencoder, e.g. Stable Diffusion's KL autoencoder (Rombach et al. 2022, section 3). This module
loads such an autoencoder from a LOCAL folder written by ``save_pretrained`` (``config.json`` +
``diffusion_pytorch_model.safetensors``, e.g. a Stable Diffusion checkout's ``vae/``; nothing is
downloaded, and pickled ``.bin`` weights are refused: kinema never unpickles a file it is handed) and
wraps it as a frame-wise video autoencoder (:class:`DiffusersAutoencoder`):

- ``encode(video [B, C, F, H, W]) -> [B, Cl, F, H / sf, W / sf]``: every frame is an image; the
  posterior mean, minus the config's ``shift_factor`` when it has one (SD3 / Flux style), unscaled;
- ``decode(latents) -> video``: the inverse, frame by frame;
- ``temporal_factor`` 1 (frames map one to one), ``spatial_factor`` ``2 ** (levels - 1)``;
- ``scale_factor``: the config's ``scaling_factor`` (0.18215 for Stable Diffusion 1.x / 2.x), read,
  not estimated (kinema's own autoencoder estimates its from data, see
  :func:`~kinema.models.autoencoder.estimate_latent_std`);
- memory: frames are folded into the batch and run ``chunk_frames`` images at a time, written into a
  preallocated output, so a long video holds one chunk's activations plus its input and output
  tensors, whatever its length (``benchmarks/ae_memory.py`` measures it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from kinema.models.autoencoder import causal_latent_shape, check_latent_input, check_video_input, resolve_chunk

WEIGHTS = "diffusion_pytorch_model.safetensors"
CLASS_NAME = "AutoencoderKL"


def _diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("a diffusers AutoencoderKL needs the optional extra: pip install 'kinema[diffusers]' "
                          "(diffusers)") from e
    return diffusers


def diffusers_class(path: str | Path) -> Optional[str]:
    """The ``_class_name`` of the diffusers model saved in folder ``path`` (from its ``config.json``), or None
    when ``path`` is not a folder holding a readable ``config.json`` with one."""
    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    name = data.get("_class_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def check_vae_folder(path: str | Path, what: str = "model.autoencoder") -> Path:
    """``path`` resolved, when it is a diffusers ``AutoencoderKL`` folder with safetensors weights; else a
    ValueError naming ``what=path``, what the folder is instead and what to give."""
    p = Path(path).expanduser()
    hint = ("give the folder written by AutoencoderKL.save_pretrained (config.json + " + WEIGHTS +
            "), e.g. a Stable Diffusion checkout's vae/, or a kinema autoencoder checkpoint / run directory")
    if not p.is_dir():
        raise FileNotFoundError(f"{what}={str(path)!r}: {p} is not a folder; {hint}")
    name = diffusers_class(p)
    if name is None:
        if diffusers_class(p / "vae") == CLASS_NAME:
            raise ValueError(f"{what}={str(path)!r} is a diffusers pipeline folder; give its autoencoder: "
                             f"{what}={p / 'vae'}")
        raise ValueError(f"{what}={str(path)!r} is not a diffusers model folder (no config.json with a _class_name "
                         f"in {p}); {hint}")
    if name != CLASS_NAME:
        raise ValueError(f"{what}={str(path)!r} holds a diffusers {name}, not an {CLASS_NAME}; {hint}")
    if not (p / WEIGHTS).is_file():
        found = sorted(f.name for f in p.iterdir() if f.is_file())
        raise ValueError(f"{what}={str(path)!r}: no {WEIGHTS} in {p} (found {found}); kinema loads safetensors "
                         f"weights only (it never unpickles a .bin): convert them once with "
                         f"AutoencoderKL.from_pretrained(...).save_pretrained(..., safe_serialization=True)")
    return p.resolve()


def frame_chunks(batch: int, frames: int, chunk: int) -> Iterator[list[tuple[int, int, int]]]:
    """The ``batch x frames`` images of a video batch in chunks of at most ``chunk`` images (0: all at once),
    in order (item by item, frame by frame); each chunk is a list of ``(item, first frame, end frame)`` runs.

    ``list(frame_chunks(2, 3, 4)) == [[(0, 0, 3), (1, 0, 1)], [(1, 1, 3)]]``."""
    chunk = chunk if chunk > 0 else batch * frames
    runs: list[tuple[int, int, int]] = []
    room = chunk
    for b in range(batch):
        f = 0
        while f < frames:
            n = min(room, frames - f)
            runs.append((b, f, f + n))
            f, room = f + n, room - n
            if room == 0:
                yield runs
                runs, room = [], chunk
    if runs:
        yield runs


def map_frames(fn, video: Tensor, out_shape: tuple[int, int, int], chunk: int) -> Tensor:
    """``fn`` (images ``[N, C, H, W]`` -> ``[N, C', H', W']``) applied to every frame of ``video [B, C, F, H, W]``,
    ``chunk`` images at a time (0: all at once), into one preallocated ``[B, C', F, H', W']`` output."""
    b, _, f = video.shape[:3]
    out = None
    for runs in frame_chunks(b, f, chunk):
        images = torch.cat([video[i, :, f0:f1].transpose(0, 1) for i, f0, f1 in runs])  # [N, C, H, W]
        result = fn(images)  # [N, C', H', W']
        if out is None:
            out = result.new_empty(b, out_shape[0], f, out_shape[1], out_shape[2])
        start = 0
        for i, f0, f1 in runs:
            out[i, :, f0:f1] = result[start:start + f1 - f0].transpose(0, 1)
            start += f1 - f0
    return out


class DiffusersAutoencoder(nn.Module):
    """A diffusers ``AutoencoderKL`` as a frame-wise :class:`~kinema.models.autoencoder.VideoAutoencoder`
    (see the module docstring). ``chunk_frames``: images per encoder / decoder call (0: all at once)."""

    def __init__(self, vae: nn.Module, chunk_frames: int = 8) -> None:
        super().__init__()
        c = vae.config
        self.vae, self.chunk_frames = vae, resolve_chunk(0, chunk_frames)  # >= 0 (0: every frame at once)
        self.in_channels, self.latent_channels = int(c.in_channels), int(c.latent_channels)
        self.spatial_factor, self.temporal_factor = 2 ** (len(c.block_out_channels) - 1), 1
        self.shift_factor = float(getattr(c, "shift_factor", None) or 0.0)

    @property
    def scale_factor(self) -> float:
        """The config's ``scaling_factor``: latents times it have ~unit std (Rombach et al. 2022, section 4.3.2)."""
        return float(self.vae.config.scaling_factor)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return causal_latent_shape(frames, height, width, channels=self.latent_channels,
                                   spatial_factor=self.spatial_factor, temporal_factor=1)

    @torch.no_grad()
    def encode(self, video: Tensor, chunk_frames: Optional[int] = None) -> Tensor:
        """Posterior means (minus ``shift_factor``) ``[B, Cl, F, H / sf, W / sf]`` of ``video [B, C, F, H, W]`` in
        [-1, 1], unscaled, ``chunk_frames`` images at a time (default ``self.chunk_frames``)."""
        check_video_input(self, video)
        c, _, lh, lw = self.latent_shape(*video.shape[2:])

        def encode_images(x: Tensor) -> Tensor:
            return self.vae.encode(x).latent_dist.mean - self.shift_factor

        return map_frames(encode_images, video, (c, lh, lw), resolve_chunk(self.chunk_frames, chunk_frames))

    @torch.no_grad()
    def decode(self, latents: Tensor, chunk_frames: Optional[int] = None) -> Tensor:
        """Videos ``[B, C, F, H sf, W sf]`` from unscaled latents ``[B, Cl, F, H, W]`` (as :meth:`encode` gives),
        ``chunk_frames`` images at a time. Not clamped (the latent space clamps)."""
        check_latent_input(self, latents)
        sf = self.spatial_factor

        def decode_images(z: Tensor) -> Tensor:
            return self.vae.decode(z + self.shift_factor).sample

        return map_frames(decode_images, latents, (self.in_channels, latents.shape[3] * sf, latents.shape[4] * sf),
                          resolve_chunk(self.chunk_frames, chunk_frames))


def load_diffusers_vae(path: str | Path, chunk_frames: int = 8,
                       what: str = "model.autoencoder") -> DiffusersAutoencoder:
    """The ``AutoencoderKL`` in local folder ``path`` (checked by :func:`check_vae_folder`; loaded with
    ``local_files_only`` and safetensors only), frozen and in eval mode, behind :class:`DiffusersAutoencoder`."""
    folder = check_vae_folder(path, what)
    diffusers = _diffusers()
    try:
        vae = diffusers.AutoencoderKL.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                      low_cpu_mem_usage=False)
    except Exception as e:  # corrupt weights, a config this diffusers cannot build
        raise ValueError(f"{what}={str(path)!r}: could not load a diffusers AutoencoderKL from {folder}: "
                         f"{' '.join(str(e).split())}") from e
    return DiffusersAutoencoder(vae, chunk_frames).requires_grad_(False).eval()


__all__ = ["CLASS_NAME", "DiffusersAutoencoder", "WEIGHTS", "check_vae_folder", "diffusers_class", "frame_chunks",
           "load_diffusers_vae", "map_frames"]
