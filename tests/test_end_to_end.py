"""The whole chain together: data -> loss -> model -> sampler. A tiny model trained on ONE clip
memorizes it, and deterministic DDIM sampling from fresh noise gives that clip back."""

import pytest
import torch

from kinema.data.synthetic import BouncingShapes
from kinema.pipelines.sample import sample_videos
from kinema.train.loop import Trainer


class OneClip(torch.utils.data.Dataset):
    def __init__(self, clip):
        self.clip = clip

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"video": self.clip, "caption": ""}


# Thresholds on the per-sample mean squared error (in [-1, 1] units) between 8 samples and the clip.
# A model that ignored the clip would sit near the clip's own variance (0.34 here). Memorized
# samples come back at ~0.002; a sample whose square lands one pixel off scores ~0.1-0.2, which a
# 400-step model does for one or two samples in eight. So: the median sample must be the clip
# (MSE < 0.01), and no sample may be as far from it as the clip's mean is (MSE < clip variance).
MEDIAN_MSE = 0.01


@pytest.mark.slow
def test_tiny_model_memorizes_one_clip_and_samples_it_back(tiny):
    clip = BouncingShapes(num_frames=4, size=16, length=1, seed=3)[0]["video"]
    cfg = tiny(**{
        "model.unet.dim": 16, "model.unet.norm_groups": 8, "model.unet.head_dim": 16,
        "train.steps": 400, "train.batch_size": 8, "train.lr": 0.002, "train.warmup_steps": 20,
        "train.ema_decay": 0.95, "train.ckpt_every": 0, "train.log_every": 50,
    })
    trainer = Trainer(cfg, dataset=OneClip(clip))
    trainer.fit()
    samples = sample_videos(trainer.ema_system(), 8, steps=16, sampler="ddim", seed=1, progress=False)
    mse = (samples - clip).pow(2).mean(dim=(1, 2, 3, 4))
    baseline = clip.var().item()
    assert baseline > 0.1
    report = f"per-sample MSE {mse.tolist()} (clip variance {baseline:.3f})"
    assert mse.median().item() < MEDIAN_MSE, report
    assert mse.max().item() < baseline, report
