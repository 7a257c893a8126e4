"""Temporal-consistency metric on bouncing shapes: the data passes; each kind of flicker fails its check."""

import numpy as np
import pytest
import torch

from scipy import ndimage

from kinema.data.synthetic import BouncingShapes
from kinema.metrics.consistency import (CIRCLE, SQUARE, TRIANGLE, consistency, consistent_shape, max_step_pixels,
                                       repeat_frames, shape_class)
from kinema.metrics.prompt_following import UNKNOWN

DS = BouncingShapes(num_frames=8, size=32, length=1000, seed=7)


def clips(n):
    return torch.stack([DS[i]["video"] for i in range(n)])


def test_dataset_clips_pass_every_check():
    r = consistency(clips(48))
    assert r["consistency"] == 1.0 and r["empty"] == 0.0 and r["num"] == 48
    assert all(r[k] == 1.0 for k in ("present", "color", "shape", "motion"))


@pytest.mark.parametrize("size", [32, 64])
def test_shape_class_reads_every_rendered_shape(size):
    ds = BouncingShapes(num_frames=1, size=size)
    for shape_id, want in enumerate([SQUARE, CIRCLE, TRIANGLE]):
        for radius in (0.14 * size, 0.2 * size):
            mask = ds.render(shape_id, 0, radius, np.array([[size / 2 + 0.3, size / 2 - 0.2]]))[0, 0] > 0
            assert shape_class(mask) == want
    assert shape_class(np.zeros((8, 8), bool)) == UNKNOWN


def _item(i):
    p = DS.params(i)
    return p, DS.render(p["shape_id"], p["color_id"], p["radius"], p["centers"])


def test_each_flicker_fails_its_own_check():
    p, video = _item(next(i for i in range(100) if DS.params(i)["shape_id"] != TRIANGLE))
    recolored = video.copy()
    other_color = (p["color_id"] + 1) % len(DS.COLORS)
    recolored[:, 3:4] = DS.render(p["shape_id"], other_color, p["radius"], p["centers"][3:4])
    reshaped = video.copy()
    swapped = CIRCLE if p["shape_id"] == SQUARE else SQUARE  # same centre of mass, other outline
    reshaped[:, 5:6] = DS.render(swapped, p["color_id"], p["radius"], p["centers"][5:6])
    blank = video.copy()
    blank[:, 2] = -1.0
    jumped = video.copy()
    far = p["centers"][4:5].copy()
    far[0, 1] += 10.0 if far[0, 1] < 16 else -10.0  # the shape jumps 10 px in one frame
    jumped[:, 4:5] = DS.render(p["shape_id"], p["color_id"], p["radius"], far)
    assert abs(far[0, 1] - p["centers"][4, 1]) > 3 * max_step_pixels(32, 8)  # a real jump
    videos = torch.from_numpy(np.stack([video, recolored, reshaped, blank, jumped]))
    r = consistency(videos)
    assert r["per_sample"] == [True, False, False, False, False]
    # a clip with an empty frame fails every check (there is nothing to follow in that frame)
    assert r["present"] == pytest.approx(4 / 5) and r["empty"] == pytest.approx(1 / 5)
    assert r["color"] == pytest.approx(3 / 5) and r["shape"] == pytest.approx(3 / 5)  # recolored / reshaped + blank
    assert r["motion"] == pytest.approx(3 / 5)  # jumped + blank


def test_longer_videos_use_the_training_clip_speed():
    long = BouncingShapes(num_frames=24, size=32, length=100, seed=1, min_speed=1.0, max_speed=1.0)  # 3 clips' travel
    videos = torch.stack([long[i]["video"] for i in range(8)])
    fast = consistency(videos, train_frames=8, max_speed=1.0)
    assert fast["consistency"] == 1.0  # allowed: per-frame step of a 1-canvas-per-8-frames clip
    assert consistency(videos, max_step=0.5)["motion"] == 0.0  # every clip moves more than 0.5 px / frame


def test_frames_repeated_for_i3d():
    v = torch.arange(8.0).reshape(1, 1, 8, 1, 1)
    out = repeat_frames(v, 9)
    assert out.shape[2] == 16 and out[0, 0, :4, 0, 0].tolist() == [0, 0, 1, 1]
    assert repeat_frames(torch.zeros(1, 1, 16, 1, 1), 9).shape[2] == 16  # long enough: unchanged


def test_rejects_non_rgb_videos():
    with pytest.raises(ValueError, match=r"\[N, 3, F, H, W\]"):
        consistency(torch.zeros(2, 1, 8, 32, 32))


def _with_stray_pixels(videos: torch.Tensor, per_frame: int, seed: int = 0) -> torch.Tensor:
    """Each frame's object grows ``per_frame`` stray pixels of its colour on its outline (4-neighbours
    of the object chosen at random): what a sampled square looks like at a pixel or two of noise."""
    rng = np.random.default_rng(seed)
    out = videos.clone()
    for v, o in zip(videos, out):
        for f in range(v.shape[1]):
            mask = (v[:, f].amax(0) > 0).numpy()
            ys, xs = np.nonzero(ndimage.binary_dilation(mask) & ~mask)
            for j in rng.choice(len(ys), size=per_frame, replace=False):
                o[:, f, ys[j], xs[j]] = v[:, f][:, torch.from_numpy(mask)].mean(1)
    return out


def test_stray_outline_pixels_do_not_change_the_shape():
    """Two stray pixels per frame change the bounding box by a pixel: with tolerance 0 the square / circle
    fits of some clips then trade places from frame to frame; the default tolerance passes them all."""
    noisy = _with_stray_pixels(clips(64), per_frame=2)
    assert consistency(noisy, shape_tolerance=0.0)["shape"] < 0.95
    assert consistency(noisy)["shape"] == 1.0


@pytest.mark.parametrize("tolerance", [None, 0.0])
def test_a_frame_redrawn_as_another_shape_fails_whatever_the_clip(tolerance):
    """Every clip (all shapes, sizes and positions of 48 draws) fails the shape check when one frame is
    redrawn as either other shape, at the same place, size and colour: the tolerance hides no real change."""
    kw = {} if tolerance is None else {"shape_tolerance": tolerance}
    for offset in (1, 2):
        videos = []
        for i in range(48):
            p, video = _item(i)
            video = video.copy()
            video[:, 4:5] = DS.render((p["shape_id"] + offset) % 3, p["color_id"], p["radius"], p["centers"][4:5])
            videos.append(video)
        r = consistency(torch.from_numpy(np.stack(videos)), **kw)
        assert r["shape"] == 0.0 and r["color"] == 1.0 and r["present"] == 1.0


def test_consistent_shape_takes_near_ties_only():
    ious = np.array([[0.90, 0.89, 0.5], [0.88, 0.90, 0.5]])  # square and circle within 0.02 in both frames
    assert consistent_shape(ious, 0.03) and not consistent_shape(ious, 0.0)
    flipped = np.array([[0.95, 0.80, 0.5], [0.80, 0.95, 0.5]])  # a clear square, then a clear circle
    assert not consistent_shape(flipped, 0.03)
    with pytest.raises(ValueError, match="-0.1"):
        consistency(clips(1), shape_tolerance=-0.1)
