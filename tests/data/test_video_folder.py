"""VideoFolder / ImageFolder on temporary folders with good, short and corrupt files."""

import json
import warnings

import av
import numpy as np
import pytest
import torch
from PIL import Image

from kinema.data.io import write_video
from kinema.data.video_folder import ImageFolder, VideoFolder, resize_crop


def gray_ramp_mp4(path, frames=12, h=24, w=32, fps=8, base=10, step=15):
    """An H.264 clip whose frame i is uniform gray ``base + step * i``: the frame index can be read
    back from the pixels."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = h, w
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for i in range(frames):
            arr = np.full((h, w, 3), base + step * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def frame_ids(video, base=10, step=15):
    """Source frame index of each clip frame of a gray-ramp clip [3, F, H, W]."""
    level = (video.mean((0, 2, 3)) + 1) * 127.5
    return torch.round((level - base) / step).long().tolist()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    gray_ramp_mp4(root / "a.mp4")
    (root / "a.txt").write_text("a gray ramp\n")
    gray_ramp_mp4(root / "sub" / "b.MP4", h=32, w=24)
    gray_ramp_mp4(root / "c.mp4", frames=3)  # too short for a clip of 4 frames with stride 2
    (root / "bad.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (root / "notes.md").write_text("not a video")
    return root


def make(folder, **kw):
    kw = {"num_frames": 4, "size": 16, "frame_stride": 2, **kw}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = VideoFolder(folder, **kw)
    return ds, [str(w.message) for w in caught]


def test_corrupt_and_short_files_are_skipped_with_one_warning_each(folder):
    ds, messages = make(folder)
    assert len(ds) == 2
    assert [p.name for p in ds.files] == ["a.mp4", "b.MP4"]
    skipped = dict(ds.skipped)
    assert set(skipped) == {str(folder / "bad.mp4"), str(folder / "c.mp4")}
    assert "unreadable" in skipped[str(folder / "bad.mp4")]
    assert "needs 7 frames" in skipped[str(folder / "c.mp4")] and "has 3" in skipped[str(folder / "c.mp4")]
    assert len(messages) == 2
    assert sum("bad.mp4" in m for m in messages) == 1 and sum("c.mp4" in m for m in messages) == 1


def test_items_have_the_requested_shape_captions_and_frames(folder):
    ds, _ = make(folder)
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (3, 4, 16, 16) and item["video"].dtype == torch.float32
        assert -1 <= item["video"].min() and item["video"].max() <= 1
        ids = frame_ids(item["video"])
        assert [b - a for a, b in zip(ids, ids[1:])] == [2, 2, 2]  # frame_stride source frames apart
        assert ids == ds.clip_indices(i).tolist()
        assert 0 <= ids[0] and ids[-1] <= 11
    assert ds[0]["caption"] == "a gray ramp" and ds[1]["caption"] == ""
    assert ds[0]["path"].endswith("a.mp4")


def test_clip_choice_is_deterministic_in_seed_index_and_epoch(folder):
    ds, _ = make(folder, num_frames=2, frame_stride=1, crop="random")
    ds2, _ = make(folder, num_frames=2, frame_stride=1, crop="random")
    assert torch.equal(ds[1]["video"], ds2[1]["video"])
    starts = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        ds2.set_epoch(epoch)
        assert torch.equal(ds[0]["video"], ds2[0]["video"])
        starts.add(int(ds.clip_indices(0)[0]))
    assert len(starts) > 1  # a new clip per epoch
    ds.set_epoch(3)
    first = ds[0]["video"]
    ds.set_epoch(5)
    ds.set_epoch(3)
    assert torch.equal(ds[0]["video"], first)


def test_fps_resampling_picks_frames_at_the_target_rate(folder):
    ds, _ = make(folder, num_frames=3, fps=4.0)  # sources are 8 fps -> every second frame
    ids = frame_ids(ds[0]["video"])
    assert [b - a for a, b in zip(ids, ids[1:])] == [2, 2]
    with pytest.raises(ValueError, match="needs 17 frames"):  # 5 frames at 2 fps span 17 source frames
        make(folder, num_frames=5, fps=2.0)


def test_manifest_captions_csv_and_jsonl(folder):
    (folder / "captions.csv").write_text('path,caption\nsub/b.MP4,"a taller ramp, 8 fps"\n')
    ds, _ = make(folder, manifest=folder / "captions.csv")
    assert ds.captions == ["a gray ramp", "a taller ramp, 8 fps"]  # sidecar still used for a.mp4
    (folder / "captions.jsonl").write_text(json.dumps({"path": "a.mp4", "caption": "from jsonl"}) + "\n")
    ds, _ = make(folder, manifest="captions.jsonl")  # relative to root
    assert ds.captions[0] == "from jsonl"
    ds, _ = make(folder, captions=False)
    assert ds.captions == ["", ""]


def test_gif_files_are_found(tmp_path):
    root = tmp_path / "g"
    root.mkdir()
    write_video(root / "x.GIF", torch.linspace(-1, 1, 6).view(1, 6, 1, 1).expand(3, 6, 10, 12).contiguous())
    ds, messages = make(root, num_frames=3, frame_stride=1, size=8)
    assert len(ds) == 1 and messages == []
    assert ds[0]["video"].shape == (3, 3, 8, 8)


def test_empty_or_all_corrupt_folders_raise_naming_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no videos in .*empty"):
        VideoFolder(empty, num_frames=4, size=16)
    bad = tmp_path / "bad"
    bad.mkdir()
    for k in range(2):
        (bad / f"x{k}.mp4").write_bytes(b"\x00not a video" * 50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"no usable videos in .*bad: all 2 found were skipped.*unreadable"):
            VideoFolder(bad, num_frames=4, size=16)
    assert sorted(str(w.message).split(":")[0] for w in caught) == [f"skipping {bad / 'x0.mp4'}",
                                                                     f"skipping {bad / 'x1.mp4'}"]
    with pytest.raises(ValueError, match="not a folder"):
        VideoFolder(tmp_path / "missing", num_frames=4, size=16)


def test_resize_crop_keeps_the_center_or_a_random_window():
    frames = torch.zeros(2, 20, 40, 3, dtype=torch.uint8)
    frames[:, :, :8] = 255  # left fifth white
    center = resize_crop(frames, 10, "center", np.random.default_rng(0))
    assert center.shape == (3, 2, 10, 10)
    assert center.max() < -0.9  # 20x40 -> 10x20, the center 10 columns avoid the white part
    lefts = {float(resize_crop(frames, 10, "random", np.random.default_rng(s)).mean()) for s in range(10)}
    assert len(lefts) > 1


def test_image_folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "deep").mkdir(parents=True)
    Image.new("RGB", (30, 20), (255, 0, 0)).save(root / "red.png")
    Image.new("L", (16, 16), 255).save(root / "deep" / "white.JPG")
    (root / "red.txt").write_text("red")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolder(root, size=8)
    assert len(ds) == 2 and [p for p, _ in ds.skipped] == [str(root / "broken.png")]
    assert len(caught) == 1 and "broken.png" in str(caught[0].message)
    item = ds[ds.captions.index("red")]
    assert item["video"].shape == (3, 1, 8, 8)
    assert torch.allclose(item["video"][:, 0, 4, 4], torch.tensor([1.0, -1.0, -1.0]), atol=0.02)
    white = ds[[p.name for p in ds.files].index("white.JPG")]["video"]
    assert white.min() > 0.95
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images in .*none"):
        ImageFolder(empty, size=8)


def test_overestimated_frame_count_redraws_the_clip_within_the_decoded_frames(folder):
    ds, _ = make(folder)
    ds.lengths[0] = 20  # as if the container's metadata promised 20 frames (the file has 12)
    epoch = next(e for e in range(50) if (ds.set_epoch(e) or True) and ds.clip_indices(0)[-1] >= 12)
    ds.set_epoch(epoch)
    with pytest.warns(UserWarning, match=r"a\.mp4: decoded only 12 frames"):
        item = ds[0]
    ids = frame_ids(item["video"])
    assert [b - a for a, b in zip(ids, ids[1:])] == [2, 2, 2] and ids[-1] <= 11


def test_a_file_that_breaks_after_indexing_is_replaced_by_the_next(folder):
    ds, _ = make(folder)
    (folder / "a.mp4").write_bytes(b"\x00garbage" * 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = ds[0]
        again = ds[0]
    assert item["path"].endswith("b.MP4") and torch.equal(item["video"], again["video"])
    assert len(caught) == 1 and "a.mp4" in str(caught[0].message)  # one warning per file
