"""The analytic colour / direction classifiers read the dataset's own clips correctly: every colour,
and the direction of every clip that moves in its captioned direction (a clip that bounces off a
wall at once visibly moves the other way; those are the only misses)."""

import numpy as np
import pytest
import torch

from kinema.data.synthetic import BouncingShapes
from kinema.metrics.prompt_following import UNKNOWN, classify, parse_caption, prompt_following


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


def test_undecidable_clips_and_captions():
    black = -torch.ones(2, 3, 4, 8, 8)
    assert classify(black) == ([UNKNOWN, UNKNOWN], [UNKNOWN, UNKNOWN])
    still = black.clone()
    still[:, 0, :, 2:4, 2:4] = 1.0  # a red square that does not move
    assert classify(still) == ([0, 0], [UNKNOWN, UNKNOWN])
    assert parse_caption("a cyan circle moving down") == (4, 3)
    with pytest.raises(ValueError, match="does not name"):
        parse_caption("digits 3 and 7")
