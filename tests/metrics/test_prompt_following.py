"""The analytic colour / direction classifiers read the dataset's own clips correctly: every colour,
and the direction of every clip that moves in its captioned direction (a clip that bounces off a
wall at once visibly moves the other way; those are the only misses)."""

import numpy as np
import pytest
import torch

from kinema.data.synthetic import BouncingShapes
from kinema.metrics.consistency import clip_shape
from kinema.metrics.prompt_following import UNKNOWN, caption_shape, classify, parse_caption, prompt_following


@pytest.mark.parametrize("frames,size", [(8, 16), (8, 32), (4, 16)])
def test_classifiers_read_ground_truth_clips(frames, size):
    ds = BouncingShapes(num_frames=frames, size=size, length=120, seed=5)
    items = [ds[i] for i in range(len(ds))]
    colors, directions = classify(torch.stack([it["video"] for it in items]))
    assert colors == [it["color_id"] for it in items]
    monotone = 0
    for i, (it, d) in enumerate(zip(items, directions)):
        vec = BouncingShapes.DIRECTION_VECTORS[it["direction_id"]]
        axis = int(np.abs(vec).argmax())
        steps = np.diff(ds.params(i)["centers"][:, axis]) * vec[axis]
        if (steps > 0).all():  # the shape moves the captioned way the whole clip
            monotone += 1
            assert d == it["direction_id"], (i, it["caption"])
    assert monotone > 0.6 * len(items)
    scores = prompt_following(torch.stack([it["video"] for it in items]), [it["caption"] for it in items])
    assert scores["color_accuracy"] == 1.0 and scores["direction_accuracy"] > 0.85
    assert scores["direction_chance"] == 0.25 and scores["color_chance"] == 1 / 7
    if size == 32:  # at 16x16 a 5-pixel triangle and square can be ambiguous (consistency.py)
        assert scores["shape_accuracy"] == 1.0 and scores["shape_chance"] == 1 / 3


def test_shape_following_counts_the_clip_shape_against_the_prompt():
    ds = BouncingShapes(num_frames=8, size=32, length=12, seed=3)
    items = [ds[i] for i in range(len(ds))]
    videos = torch.stack([it["video"] for it in items])
    assert [clip_shape(v) for v in videos] == [it["shape_id"] for it in items]
    wrong = [it["caption"].replace(BouncingShapes.SHAPES[it["shape_id"]],
                                   BouncingShapes.SHAPES[(it["shape_id"] + 1) % 3]) for it in items]
    scores = prompt_following(videos, wrong)
    assert scores["shape_accuracy"] == 0.0 and scores["color_accuracy"] == 1.0
    assert caption_shape("a red square moving left") == BouncingShapes.SHAPES.index("square")
    assert caption_shape("a red thing moving left") == UNKNOWN
    assert "shape_accuracy" not in prompt_following(videos[:1], ["a red thing moving left"])
    assert clip_shape(-torch.ones(3, 4, 8, 8)) == UNKNOWN


def test_undecidable_clips_and_captions():
    black = -torch.ones(2, 3, 4, 8, 8)
    assert classify(black) == ([UNKNOWN, UNKNOWN], [UNKNOWN, UNKNOWN])
    still = black.clone()
    still[:, 0, :, 2:4, 2:4] = 1.0  # a red square that does not move
    assert classify(still) == ([0, 0], [UNKNOWN, UNKNOWN])
    assert parse_caption("a cyan circle moving down") == (4, 3)
    with pytest.raises(ValueError, match="does not name"):
        parse_caption("digits 3 and 7")
