"""Temporal-consistency metric on bouncing shapes: the data passes; each kind of flicker fails its check."""

import numpy as np
import pytest
import torch

from kinema.data.synthetic import BouncingShapes
from kinema.metrics.consistency import (CIRCLE, SQUARE, TRIANGLE, consistency, max_step_pixels, repeat_frames,
                                       shape_class)
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
