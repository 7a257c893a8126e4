"""sample_videos(on_step=...): one call per sampler step of each batch, at the grid's noise levels, with the
step's clean estimate; the last estimate is the sample, and watching does not change what is drawn."""

import torch

from kinema.config import load_config
from kinema.pipelines.sample import SamplerSettings, sample_videos
from kinema.system import build_system
from model_helpers import randomize


def tiny_system():
    cfg = load_config(None, ["model.unet.dim=8", "model.unet.dim_mults=[1,2]", "model.unet.attn_levels=[1]",
                             "model.unet.num_res_blocks=1", "model.unet.head_dim=8", "data.num_frames=4",
                             "data.size=8", "sample.steps=3", "sample.sampler=ddpm"])
    system = build_system(cfg)
    randomize(system.model, seed=1, std=0.1).eval()
    return system


def test_on_step_sees_every_step_of_every_batch():
    system = tiny_system()
    calls = []
    videos = sample_videos(system, 3, seed=2, batch_size=2, progress=False,
                           on_step=lambda first, step, logsnr, x_hat: calls.append((first, step, logsnr, x_hat.clone())))
    grid = SamplerSettings.from_system(system).grid
    assert [(c[0], c[1]) for c in calls] == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2)]
    assert [c[2] for c in calls] == [float(grid[i]) for i in (0, 1, 2)] * 2
    assert [c[3].shape[0] for c in calls] == [2, 2, 2, 1, 1, 1]
    assert not torch.equal(calls[0][3], calls[2][3]), "the estimate changes over the steps"
    last = torch.cat([calls[2][3], calls[5][3]])
    torch.testing.assert_close(system.space.decode(last).float(), videos)
    torch.testing.assert_close(sample_videos(system, 3, seed=2, batch_size=2, progress=False), videos)
