"""Transparent pixels read as black (issue 11, item 10), in GIFs (PyAV) and images (Pillow)."""

import numpy as np
from PIL import Image

from kinema.data.io import read_frames, read_video


def _rgba_frames(n=3, size=8):
    frames = []
    for k in range(n):
        a = np.zeros((size, size, 4), np.uint8)
        a[..., 0], a[..., 3] = 200, 255
        a[: size // 2, :, 3] = 0  # top half transparent
        frames.append(Image.fromarray(a, "RGBA"))
    return frames


def test_transparent_gif_pixels_are_black(tmp_path):
    path = tmp_path / "t.gif"
    frames = _rgba_frames()
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, disposal=2)
    video = read_video(path)
    assert video.shape[1:] == (8, 8, 3)
    assert (video[:, :4] == 0).all(), "transparent: black, not white"
    assert (video[:, 4:, :, 0] > 150).all() and (video[:, 4:, :, 1:] < 50).all(), "opaque pixels unchanged"
    frames, _ = read_frames(path, [0])
    assert (frames[0, :4] == 0).all()


def test_transparent_png_pixels_are_black(tmp_path):
    path = tmp_path / "t.png"
    img = np.zeros((8, 8, 4), np.uint8)
    img[..., :3] = 255  # white under the transparent half
    img[4:, :, 3] = 255
    Image.fromarray(img, "RGBA").save(path)
    video = read_video(path)
    assert (video[0, :4] == 0).all() and (video[0, 4:] == 255).all()
