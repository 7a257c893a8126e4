"""Reading and writing videos: the only place where kinema touches uint8 pixels.

Inside the library a video is a float tensor ``[C, F, H, W]`` (or ``[B, C, F, H, W]``) in
[-1, 1]; on disk it is whatever PyAV / Pillow read and write. Conversions:

- :func:`to_uint8`   float ``[C, F, H, W]`` in [-1, 1]  ->  uint8 ``[F, H, W, C]`` (numpy)
- :func:`from_uint8` uint8 ``[F, H, W, C]`` or ``[F, H, W]`` ->  float ``[C, F, H, W]`` in [-1, 1]

Formats, chosen by the extension of the output path in :func:`write_video`:

- ``.mp4``: H.264 (libx264, yuv420p, constant quality ``crf``) through PyAV. Height and width
  are padded (bottom / right, black) to even numbers, as yuv420p requires.
- ``.gif``: Pillow, looping forever. Pillow merges identical consecutive frames into one
  longer frame (the timing is kept), so a GIF of a still video reads back with fewer frames.
- ``.png``: one grid image, one row per sample and one column per frame, 1-px gaps. The
  layout is stored in the PNG's text chunk, so :func:`read_grid` / :func:`read_video` can cut
  it back into frames.

A batch ``[B, C, F, H, W]`` written as mp4 or gif is tiled into one grid video by
:func:`tile_batch`.

Transparency: frames with an alpha channel (GIF, APNG, WebM with alpha, ...) are composited on a
black background when read, like the decoders that drop alpha (a transparent pixel reads as black,
never as the white that FFmpeg's RGB conversion gives).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import av
import numpy as np
import torch
from torch import Tensor

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
WRITE_EXTENSIONS = (".mp4", ".gif", ".png")

_GRID_KEY = "kinema-grid"  # PNG text chunk: "rows,cols,height,width,gap"

PathLike = Union[str, Path]


class VideoDecodeError(ValueError):
    """A file could not be opened or decoded as a video (the message names the file)."""


# ---- uint8 <-> float ---------------------------------------------------------------------------


def to_uint8(video: Tensor) -> np.ndarray:
    """float ``[C, F, H, W]`` (or ``[B, C, F, H, W]``) in [-1, 1] -> uint8 ``[F, H, W, C]``
    (or ``[B, F, H, W, C]``). Values outside [-1, 1] are clipped (samplers can overshoot)."""
    video = torch.as_tensor(video)
    if video.ndim not in (4, 5):
        raise ValueError(f"expected a video [C, F, H, W] or [B, C, F, H, W], got shape {tuple(video.shape)}")
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.movedim(-4, -1)  # channels last: [..., F, H, W, C]
    return x.cpu().numpy()


def from_uint8(array) -> Tensor:
    """uint8 ``[F, H, W, C]`` (or ``[F, H, W]`` grayscale) -> float32 ``[C, F, H, W]`` in [-1, 1]."""
    x = torch.as_tensor(np.asarray(array))
    if x.dtype != torch.uint8:
        raise ValueError(f"from_uint8 expects uint8 pixels, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    if x.ndim != 4:
        raise ValueError(f"expected frames [F, H, W, C] or [F, H, W], got shape {tuple(x.shape)}")
    return x.permute(3, 0, 1, 2).float().div(127.5).sub(1.0).contiguous()


def tile_batch(videos: Tensor, nrow: Optional[int] = None, gap: int = 1, pad_value: float = 1.0) -> Tensor:
    """Tile ``[B, C, F, H, W]`` into one grid video ``[C, F, H', W']``.

    ``nrow`` videos per grid row (default ``ceil(sqrt(B))``); ``gap`` pixels of ``pad_value``
    between tiles (none around the border), so ``H' = rows * H + (rows - 1) * gap``.
    """
    if videos.ndim != 5:
        raise ValueError(f"tile_batch expects [B, C, F, H, W], got shape {tuple(videos.shape)}")
    b, c, f, h, w = videos.shape
    ncol = nrow or math.ceil(math.sqrt(b))
    if ncol < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    ncol = min(ncol, b)
    rows = math.ceil(b / ncol)
    grid = videos.new_full((c, f, rows * h + (rows - 1) * gap, ncol * w + (ncol - 1) * gap), pad_value)
    for i in range(b):
        r, col = divmod(i, ncol)
        y, x = r * (h + gap), col * (w + gap)
        grid[:, :, y:y + h, x:x + w] = videos[i]
    return grid


# ---- reading -----------------------------------------------------------------------------------


def _rgb(frame) -> np.ndarray:
    """A decoded PyAV frame as uint8 ``[H, W, 3]``; alpha (when the format has it) composited on black."""
    if len(frame.format.components) != 4:
        return frame.to_ndarray(format="rgb24")
    rgba = frame.to_ndarray(format="rgba").astype(np.uint16)
    return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)



def read_video(path: PathLike, max_frames: Optional[int] = None) -> np.ndarray:
    """Decode a video (mp4, webm, mkv, avi, mov, gif, ...) into uint8 ``[F, H, W, 3]`` (RGB).

    Image files read as 1-frame videos, except a grid PNG written by :func:`write_video`, which
    is cut back into its frames (one sample only; use :func:`read_grid` for a batch).
    Raises :class:`VideoDecodeError` naming the file when it cannot be decoded.
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        grid = read_grid(path)
        if grid.shape[0] != 1:
            raise ValueError(f"{path} holds a grid of {grid.shape[0]} videos; read it with read_grid()")
        return grid[0, :max_frames] if max_frames else grid[0]
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(_rgb(frame))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except VideoDecodeError:
        raise
    except Exception as e:  # PyAV raises many error types (FFmpegError, InvalidDataError, OSError, ...)
        raise VideoDecodeError(f"cannot decode video {path}: {e}") from e
    if not frames:
        raise VideoDecodeError(f"{path}: no decodable frames")
    return np.stack(frames)


def read_grid(path: PathLike) -> np.ndarray:
    """A PNG written by :func:`write_video` -> uint8 ``[B, F, H, W, 3]``. Any other image reads
    as ``[1, 1, H, W, 3]`` (one 1-frame video)."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            info = dict(getattr(im, "text", {}) or {})
            if "A" in im.getbands() or "transparency" in im.info:  # composite on black, as for videos
                rgba = np.asarray(im.convert("RGBA")).astype(np.uint16)
                pixels = ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
            else:
                pixels = np.asarray(im.convert("RGB"))
    except Exception as e:
        raise VideoDecodeError(f"cannot read image {path}: {e}") from e
    layout = info.get(_GRID_KEY)
    if not layout:
        return pixels[None, None]
    rows, cols, h, w, gap = (int(v) for v in layout.split(","))
    out = np.empty((rows, cols, h, w, 3), np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = r * (h + gap), c * (w + gap)
            out[r, c] = pixels[y:y + h, x:x + w]
    return out


class VideoInfo(tuple):
    """``(num_frames, fps, height, width, exact)`` of a video; ``exact`` is False when the frame
    count was estimated from the container's duration rather than stored or counted."""

    __slots__ = ()

    def __new__(cls, num_frames: int, fps: Optional[float], height: int, width: int, exact: bool):
        return super().__new__(cls, (num_frames, fps, height, width, exact))

    num_frames = property(lambda self: self[0])
    fps = property(lambda self: self[1])
    height = property(lambda self: self[2])
    width = property(lambda self: self[3])
    exact = property(lambda self: self[4])


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, frame rate and size of a video, cheaply.

    Uses the stream's stored frame count when present, else ``duration * frame rate``, else
    decodes the whole file to count. Always decodes the first frame, so a file that opens but
    does not decode is reported. Raises :class:`VideoDecodeError` naming the file.
    """
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            first = next(iter(container.decode(stream)), None)
            if first is None:
                raise VideoDecodeError(f"{path}: no decodable frames")
            height, width = first.height, first.width
            n, exact = int(stream.frames or 0), True
            if n <= 0 and fps:
                seconds = None
                if stream.duration and stream.time_base:
                    seconds = float(stream.duration * stream.time_base)
                elif container.duration:
                    seconds = container.duration / av.time_base
                if seconds:
                    n, exact = int(math.floor(seconds * fps + 1e-6)), False
            if n <= 0:
                container.seek(0)
                n, exact = sum(1 for _ in container.decode(stream)), True
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(f"cannot decode video {path}: {e}") from e
    if n <= 0:
        raise VideoDecodeError(f"{path}: no decodable frames")
    return VideoInfo(n, fps, height, width, exact)


def read_frames(path: PathLike, indices, fps: Optional[float] = None) -> tuple[np.ndarray, int]:
    """Decode the frames at sorted source ``indices`` (repeats allowed) -> uint8 ``[len, H, W, 3]``.

    Decodes from the start and stops after the last needed frame, except that when the first
    needed frame is far in, it seeks to the keyframe before it (frame index from the
    timestamp, which assumes a constant frame rate ``fps``). Returns the frames and the number
    of source frames seen; if the file ends early the missing indices are absent (the caller
    checks ``len``). Raises :class:`VideoDecodeError` naming the file.
    """
    indices = [int(i) for i in indices]
    wanted = set(indices)
    last = max(indices)
    got: dict[int, np.ndarray] = {}
    seen = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            got, seen = _decode_indices(container, stream, wanted, last, fps, min(indices))
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(f"cannot decode video {path}: {e}") from e
    frames = [got[i] for i in indices if i in got]
    return (np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)), seen


_SEEK_MIN_FRAMES = 48  # seek only when the clip starts at least this many frames in


def _decode_indices(container, stream, wanted, last, fps, first):
    tb = stream.time_base
    start = stream.start_time or 0
    if fps and tb and first >= _SEEK_MIN_FRAMES:
        target = start + int((first - 0.5) / fps / float(tb))
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
            got, seen, ok = _decode_from_pts(container, stream, wanted, last, fps, tb, start)
            if ok:
                return got, seen
        except Exception:  # fall back to decoding from the start
            pass
        container.seek(0)
    got: dict[int, np.ndarray] = {}
    seen = 0
    for i, frame in enumerate(container.decode(stream)):
        seen = i + 1
        if i in wanted:
            got[i] = _rgb(frame)
        if i >= last:
            break
    return got, seen


def _decode_from_pts(container, stream, wanted, last, fps, tb, start):
    """After a seek: index frames by timestamp. ``ok`` is False when timestamps are missing, the
    seek landed after the first wanted frame, or a wanted index never appeared (a gap in the
    timestamps, or the end of the file); the caller then decodes from the start."""
    got: dict[int, np.ndarray] = {}
    seen = 0
    first_idx = None
    for frame in container.decode(stream):
        if frame.pts is None:
            return got, seen, False
        i = int(round(float((frame.pts - start) * tb) * fps))
        if first_idx is None:
            first_idx = i
            if i > min(wanted):
                return got, seen, False
        seen = i + 1
        if i in wanted:
            got[i] = _rgb(frame)
        if i >= last:
            break
    return got, seen, all(w in got for w in wanted)


# ---- writing -----------------------------------------------------------------------------------


def write_video(path: PathLike, video: Tensor, fps: float = 8, *, nrow: Optional[int] = None,
                crf: int = 18) -> Path:
    """Write float ``[C, F, H, W]`` or ``[B, C, F, H, W]`` in [-1, 1] (C = 1 or 3) to ``path``.

    The format follows the extension: ``.mp4`` (H.264), ``.gif`` (looping), ``.png`` (grid:
    one row per sample, one column per frame). A batch is tiled into a grid video for mp4/gif
    (``nrow`` videos per row). Creates parent folders; returns the path written.
    """
    path = Path(path).expanduser()
    ext = path.suffix.lower()
    if ext not in WRITE_EXTENSIONS:
        raise ValueError(f"cannot write video to {path}: unknown extension {ext!r}; "
                         f"use one of {', '.join(WRITE_EXTENSIONS)}")
    video = torch.as_tensor(video).detach().cpu().float()
    if video.ndim not in (4, 5) or video.shape[-4] not in (1, 3):
        raise ValueError(f"write_video expects [C, F, H, W] or [B, C, F, H, W] with C in (1, 3), "
                         f"got shape {tuple(video.shape)}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext == ".png":
        _write_png_grid(path, video if video.ndim == 5 else video[None])
        return path
    if video.ndim == 5:
        video = tile_batch(video, nrow=nrow)
    frames = to_uint8(video)  # [F, H, W, C]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if ext == ".mp4":
        _write_mp4(path, frames, fps, crf)
    else:
        _write_gif(path, frames, fps)
    return path


def _write_mp4(path: Path, frames: np.ndarray, fps: float, crf: int) -> None:
    f, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:  # yuv420p needs even sizes
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)))
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = _add_h264_stream(container, rate)
        stream.width, stream.height = w + pw, h + ph
        stream.pix_fmt = "yuv420p"
        if stream.codec_context.name == "libx264":
            stream.options = {"crf": str(crf), "preset": "medium"}
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _add_h264_stream(container, rate):
    errors = []
    for codec in ("libx264", "h264", "mpeg4"):  # PyAV wheels ship libx264; the rest are fallbacks
        try:
            return container.add_stream(codec, rate=rate)
        except Exception as e:
            errors.append(f"{codec}: {e}")
    raise RuntimeError(f"no H.264/MPEG-4 encoder available in PyAV ({'; '.join(errors)})")


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(arr)) for arr in frames]
    duration = max(int(round(1000 / fps)), 20)  # GIF stores centiseconds; most viewers floor at 20 ms
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False)


def _write_png_grid(path: Path, videos: Tensor, gap: int = 1) -> None:
    """``[B, C, F, H, W]`` -> one PNG: row b holds sample b's frames left to right."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    b, c, f, h, w = videos.shape
    rows = videos.permute(0, 2, 1, 3, 4)  # [B, F, C, H, W]: tile frames as the "batch" of each row
    grid = tile_batch(rows.reshape(b * f, c, 1, h, w), nrow=f, gap=gap)  # [C, 1, H', W']
    pixels = to_uint8(grid)[0]  # [H', W', C]
    if c == 1:
        pixels = pixels[..., 0]
    meta = PngInfo()
    meta.add_text(_GRID_KEY, f"{b},{f},{h},{w},{gap}")
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, pnginfo=meta)

