"""Joint image-video items (VDM section 3): appended images and their frame segments."""

import pytest
import torch
from torch.utils.data import Dataset

from kinema.data.joint import JointImageVideo, frame_segments, image_count
from kinema.data.loader import collate
from kinema.data.synthetic import BouncingShapes


class Frames(Dataset):
    """Item i: constant video with value i / 100, so any frame names its item."""

    def __init__(self, n=6, frames=4, channels=3, size=8):
        self.n, self.frames, self.channels, self.size = n, frames, channels, size
        self.epochs = []

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __getitem__(self, i):
        video = torch.full((self.channels, self.frames, self.size, self.size), i / 100)
        video[:, :, 0, 0] = torch.arange(self.frames) / 1000  # frame index in one pixel
        return {"video": video, "caption": f"item {i}", "label": i}


def test_image_count():
    assert image_count(16, 0.5) == 16
    assert image_count(16, 0.0) == 0
    assert image_count(16, 0.2) == 4
    for f in (4, 8, 16):
        for frac in (0.1, 0.25, 0.5, 0.75):
            k = image_count(f, frac)
            assert abs(k / (f + k) - frac) <= 0.5 / (f + k) + 1e-9  # the closest achievable share
    for bad in (1.0, -0.1, 1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match="image_fraction"):
            image_count(16, bad)
    with pytest.raises(ValueError, match="num_frames"):
        image_count(0, 0.5)


def test_frame_segments():
    assert frame_segments(3, 2).tolist() == [0, 0, 0, 1, 2]
    assert frame_segments(2, 0).tolist() == [0, 0]
    assert frame_segments(2, 1).dtype == torch.long


def test_images_are_frames_of_other_videos():
    base = Frames(n=6, frames=4)
    ds = JointImageVideo(base, num_images=3, seed=0)
    assert len(ds) == 6
    for i in range(6):
        item = ds[i]
        assert item["video"].shape == (3, 7, 8, 8)
        assert torch.equal(item["video"][:, :4], base[i]["video"])  # the clip comes first, unchanged
        assert item["frame_segments"].tolist() == [0, 0, 0, 0, 1, 2, 3]
        assert item["caption"] == f"item {i}" and item["label"] == i  # the video item's metadata
        for k in range(4, 7):
            src = round(item["video"][0, k, 1, 1].item() * 100)
            frame = round(item["video"][0, k, 0, 0].item() * 1000)
            assert src != i and 0 <= src < 6 and 0 <= frame < 4
            assert torch.equal(item["video"][:, k], base[src]["video"][:, frame])
    # deterministic per (seed, index, epoch); the epoch changes the picks
    assert torch.equal(ds[2]["video"], JointImageVideo(base, num_images=3, seed=0)[2]["video"])
    picks = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        picks.add(tuple(ds[2]["video"][0, 4:, 1, 1].tolist()))
    assert len(picks) > 1
    assert base.epochs[-1] == 5  # set_epoch is forwarded


def test_images_from_an_image_dataset_and_shape_checks():
    videos = BouncingShapes(num_frames=4, size=8, length=5, seed=0)
    images = Frames(n=3, frames=1, size=8)
    item = JointImageVideo(videos, images, num_images=2)[1]
    assert item["video"].shape == (3, 6, 8, 8)
    assert set(item) >= {"video", "caption", "frame_segments", "color_id", "shape_id", "direction_id"}
    for k in (4, 5):
        assert round(item["video"][0, k, 1, 1].item() * 100) in range(3)
    with pytest.raises(ValueError, match=r"\[3, 1, 8, 8\]"):
        JointImageVideo(videos, Frames(n=2, frames=1, size=6), num_images=1)[0]  # wrong size
    with pytest.raises(ValueError, match=r"\[3, 1, 8, 8\]"):
        JointImageVideo(videos, Frames(n=2, frames=2, size=8), num_images=1)[0]  # not single frames
    plain = JointImageVideo(videos, num_images=0)[3]
    assert torch.equal(plain["video"], videos[3]["video"]) and plain["frame_segments"].tolist() == [0] * 4


def test_joint_items_collate_to_batched_segments():
    ds = JointImageVideo(Frames(n=4, frames=2), num_images=2)
    batch = collate([ds[i] for i in range(3)])
    assert batch["video"].shape == (3, 3, 4, 8, 8)
    assert batch["frame_segments"].shape == (3, 4) and batch["frame_segments"].dtype == torch.long
    assert batch["frame_segments"][0].tolist() == [0, 0, 1, 2]


def test_joint_training_refuses_per_item_conditioning():
    """Appended images come from other clips, so the clip's caption / class is wrong for them: a
    conditional model must not train on such items (the review found 67 of 80 images mis-captioned)."""
    from kinema.data.joint import check_joint_conditioning

    joint = JointImageVideo(Frames(), num_images=2)
    mislabelled = [item for item in (joint[i] for i in range(6))
                   if any(abs(float(v) - item["label"] / 100) > 1e-6 for v in item["video"][0, 4:, 1, 1])]
    assert mislabelled  # the appended frames belong to other items than the caption / label names
    for keys in (["caption"], ["label"], ["caption", "label"]):
        with pytest.raises(ValueError, match="image_fraction.*" + keys[0]):
            check_joint_conditioning(joint, keys)
    check_joint_conditioning(joint, [None])  # unconditional: fine
    check_joint_conditioning(JointImageVideo(Frames(), num_images=0), ["caption"])  # no images: fine
    check_joint_conditioning(Frames(), ["caption"])  # plain videos: fine


@pytest.mark.parametrize("extra", [
    {"model.unet.text_dim": 16, "model.text.encoder": "builtin", "model.text.dim": 16, "model.text.depth": 1,
     "model.text.heads": 2},
    {"data.class_key": "color_id", "model.unet.num_classes": 7},
])
def test_trainer_refuses_joint_training_of_conditional_models(tiny, extra):
    from kinema.train.loop import Trainer

    with pytest.raises(ValueError, match="image_fraction"):
        Trainer(tiny(**{"data.image_fraction": 0.5, **extra}))
    Trainer(tiny(**extra))  # the same model without appended images builds


class Labelled(Frames):
    """Frames whose item i has ``label = i % 3`` (and a unique caption)."""

    def __getitem__(self, i):
        return {**super().__getitem__(i), "label": i % 3}


def test_matched_images_come_from_items_with_the_same_labels():
    """data.image_match: every appended image is a frame of *another* item with the clip's label, so a
    class-conditional model trains each image under its own class."""
    from kinema.data.joint import check_joint_conditioning

    joint = JointImageVideo(Labelled(n=9), num_images=3, match=["label"])
    sources = []
    for epoch in range(3):
        joint.set_epoch(epoch)
        for i in range(9):
            item = joint[i]
            for v in item["video"][0, 4:, 1, 1]:  # the appended images' constant values name their items
                j = round(float(v) * 100)
                assert j != i and j % 3 == item["label"], (i, j)
                sources.append(j)
    assert len(set(sources)) == 9  # every item of each group is used, not always the same one
    check_joint_conditioning(joint, ["label"])  # matched: allowed
    with pytest.raises(ValueError, match="caption"):
        check_joint_conditioning(joint, ["label", "caption"])  # the caption is not matched
    with pytest.raises(ValueError, match="item 0 .*matches no other clip"):
        JointImageVideo(Labelled(), num_images=2, match="caption")  # captions are unique here
    with pytest.raises(ValueError, match="has no \\['colour'\\]"):
        JointImageVideo(Labelled(), num_images=2, match=["colour"])


def test_dataset_labels_match_the_items():
    """``metadata(i)`` (read for image_match without drawing pixels) is exactly the item without its video."""
    from kinema.data.synthetic import MovingDigits

    for ds in (BouncingShapes(num_frames=2, size=16, length=20, seed=3),
               MovingDigits(num_frames=2, size=16, num_digits=2, length=20, seed=3)):
        for i in range(20):
            item = ds[i]
            assert ds.metadata(i) == {k: v for k, v in item.items() if k != "video"}


def test_matched_bouncing_shapes_images_show_the_captioned_shape():
    """On the demo's data, matching on the caption gives images of the caption's colour and shape."""
    from kinema.metrics.consistency import frame_objects

    ds = BouncingShapes(num_frames=4, size=32, length=1000, seed=0)  # every caption repeats
    joint = JointImageVideo(ds, num_images=3, match=["caption"])
    for i in range(12):
        item = joint[i]
        objects = frame_objects(item["video"])
        assert (objects["color"] == item["color_id"]).all() and (objects["shape"] == item["shape_id"]).all()


@pytest.mark.parametrize("extra", [
    {"model.unet.text_dim": 16, "model.text.encoder": "builtin", "model.text.dim": 16, "model.text.depth": 1,
     "model.text.heads": 2, "data.image_match": "[caption]"},
    {"data.class_key": "color_id", "model.unet.num_classes": 7, "data.image_match": "[color_id]"},
])
def test_trainer_trains_conditional_models_on_matched_images(tiny, extra):
    from kinema.train.loop import Trainer

    trainer = Trainer(tiny(**{"data.image_fraction": 0.5, "data.length": 1000, "train.steps": 2, **extra}))
    assert trainer.fit()["final_step"] == 2


def test_trainer_refuses_clip_norm_stats_with_joint_items(tiny):
    from kinema.train.loop import Trainer

    with pytest.raises(ValueError, match="norm_stats=clip.*image_fraction=0.5"):
        Trainer(tiny(**{"data.image_fraction": 0.5, "model.unet.norm_stats": "clip"}))
    Trainer(tiny(**{"model.unet.norm_stats": "clip"}))  # clips only: fine
