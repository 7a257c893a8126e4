"""kinema.data.io: uint8 conversion, grids, and write/read round trips for mp4, gif and png."""

import av
import numpy as np
import pytest
import torch

from kinema.data.io import (
    VideoDecodeError,
    from_uint8,
    probe_video,
    read_frames,
    read_grid,
    read_video,
    tile_batch,
    to_uint8,
    write_video,
)


def smooth_video(frames=10, h=32, w=48):
    """[3, F, H, W] in [-1, 1]: gentle color gradients drifting over time (few levels per pixel)."""
    t = torch.arange(frames).float()[:, None, None]
    y = torch.linspace(0, 1, h)[None, :, None]
    x = torch.linspace(0, 1, w)[None, None, :]
    zero = torch.zeros(frames, h, w)
    return torch.stack([zero + 0.6 * torch.sin(3.0 * x + 0.1 * t), zero + 0.5 * (y - 0.5) + 0.03 * t,
                        zero + 0.4 * (x - y)], 0)


def encode_mp4(path, frames_uint8, fps=25, gop=None):
    """Write uint8 [F, H, W, 3] with PyAV directly (independent of write_video)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames_uint8.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.options = {"g": str(gop), "crf": "12"}
        for arr in frames_uint8:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_uint8_round_trip_and_layout():
    v = torch.rand(3, 4, 5, 6) * 2 - 1
    u = to_uint8(v)
    assert u.dtype == np.uint8 and u.shape == (4, 5, 6, 3)
    back = from_uint8(u)
    assert back.shape == v.shape and back.dtype == torch.float32
    assert (back - v).abs().max() <= 1 / 127.5 + 1e-6
    # out-of-range values are clipped, not wrapped
    assert to_uint8(torch.full((1, 1, 2, 2), 3.0)).max() == 255 and to_uint8(torch.full((1, 1, 2, 2), -3.0)).max() == 0
    # grayscale frames [F, H, W] become one channel; batches keep their batch axis
    assert from_uint8(np.zeros((2, 3, 4), np.uint8)).shape == (1, 2, 3, 4)
    assert to_uint8(torch.zeros(2, 1, 3, 4, 5)).shape == (2, 3, 4, 5, 1)
    with pytest.raises(ValueError, match="uint8"):
        from_uint8(np.zeros((2, 3, 4, 3), np.float32))


def test_tile_batch_places_each_video_with_one_pixel_gaps():
    b = torch.arange(5).float().view(5, 1, 1, 1, 1).expand(5, 1, 2, 3, 4) / 10  # video i is constant i/10
    grid = tile_batch(b, nrow=3)  # 3 per row -> 2 rows
    assert grid.shape == (1, 2, 2 * 3 + 1, 3 * 4 + 2)
    for i in range(5):
        r, c = divmod(i, 3)
        tile = grid[:, :, r * 4:r * 4 + 3, c * 5:c * 5 + 4]
        assert torch.all(tile == i / 10)
    assert torch.all(grid[:, :, 3, :] == 1.0)  # gap row
    assert torch.all(grid[:, :, 4:, 10:] == 1.0)  # the empty sixth cell is padding
    assert tile_batch(torch.zeros(4, 3, 1, 2, 2)).shape == (3, 1, 5, 5)  # default: ceil(sqrt(B)) per row


def test_mp4_round_trip_preserves_frames_size_and_pixels(tmp_path):
    v = smooth_video()
    path = write_video(tmp_path / "sub" / "a.mp4", v, fps=8)
    assert path.exists()
    frames = read_video(path)
    assert frames.shape == (10, 32, 48, 3) and frames.dtype == np.uint8
    err = (from_uint8(frames) - v).abs()
    assert err.mean() < 0.02, err.mean()  # < ~2.5 uint8 levels on average after H.264 + yuv420p
    info = probe_video(path)
    assert info.num_frames == 10 and info.fps == pytest.approx(8) and (info.height, info.width) == (32, 48)
    assert read_video(path, max_frames=4).shape == (4, 32, 48, 3)


def test_mp4_pads_odd_sizes_and_tiles_batches(tmp_path):
    odd = read_video(write_video(tmp_path / "odd.mp4", torch.zeros(3, 3, 17, 23)))
    assert odd.shape == (3, 18, 24, 3)
    batch = torch.rand(4, 1, 3, 8, 8) * 2 - 1  # grayscale batch -> 2x2 grid of 8x8 with 1-px gaps
    grid = read_video(write_video(tmp_path / "b.mp4", batch))
    assert grid.shape == (3, 18, 18, 3)  # 17 padded to even


def test_gif_round_trip(tmp_path):
    v = smooth_video(frames=6, h=20, w=30)
    frames = read_video(write_video(tmp_path / "a.gif", v, fps=10))
    assert frames.shape == (6, 20, 30, 3)
    assert (from_uint8(frames) - v).abs().mean() < 0.05  # 256-color palette per frame
    gray = read_video(write_video(tmp_path / "g.gif", torch.linspace(-1, 1, 4).view(1, 4, 1, 1).expand(1, 4, 5, 5)))
    assert gray.shape == (4, 5, 5, 3)
    assert np.all(gray[..., 0] == gray[..., 1])  # one channel written as gray


def test_png_grid_round_trip(tmp_path):
    v = torch.rand(3, 5, 7, 9) * 2 - 1
    frames = read_video(write_video(tmp_path / "one.png", v))
    assert frames.shape == (5, 7, 9, 3)
    assert (from_uint8(frames) - v).abs().max() <= 1 / 127.5 + 1e-6  # lossless
    batch = torch.rand(2, 1, 4, 6, 6) * 2 - 1
    path = write_video(tmp_path / "batch.png", batch)
    grid = read_grid(path)
    assert grid.shape == (2, 4, 6, 6, 3)
    assert (from_uint8(grid[1])[:1] - batch[1]).abs().max() <= 1 / 127.5 + 1e-6
    from PIL import Image

    assert Image.open(path).size == (4 * 6 + 3, 2 * 6 + 1)  # one column per frame, one row per sample
    with pytest.raises(ValueError, match="read_grid"):
        read_video(path)


def test_write_video_rejects_bad_extension_and_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"'\.avi'.*\.mp4"):
        write_video(tmp_path / "x.avi", torch.zeros(3, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 2, 4, 4\)"):
        write_video(tmp_path / "x.mp4", torch.zeros(2, 2, 4, 4))  # 2 channels
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "x.gif", torch.zeros(4, 4))


def test_read_video_names_a_corrupt_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        read_video(bad)
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        probe_video(bad)


def test_read_frames_seek_matches_sequential_decode(tmp_path):
    n = 120
    frames = np.zeros((n, 16, 16, 3), np.uint8)
    frames[..., 0] = (np.arange(n) * 2)[:, None, None]  # frame index in the red channel
    frames[..., 1] = 255 - (np.arange(n) * 2)[:, None, None]
    path = tmp_path / "long.mp4"
    encode_mp4(path, frames, fps=25, gop=10)
    full = read_video(path)
    assert full.shape[0] == n
    wanted = [70, 73, 73, 76, 100]  # far enough in to seek; a repeat is allowed
    got, seen = read_frames(path, wanted, fps=25.0)
    assert got.shape == (5, 16, 16, 3) and seen == 101
    assert np.array_equal(got, full[wanted])
    early, _ = read_frames(path, [0, 2, 4], fps=25.0)  # no seek
    assert np.array_equal(early, full[[0, 2, 4]])
