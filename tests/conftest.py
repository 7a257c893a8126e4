import os

import pytest

os.environ.setdefault("KINEMA_TEST", "1")


def tiny_overrides(out_dir, **extra) -> list[str]:
    """Overrides that make a very small, fast model and run (CPU, seconds)."""
    base = {
        "model.unet.dim": 8,
        "model.unet.dim_mults": "[1,2]",
        "model.unet.num_res_blocks": 1,
        "model.unet.attn_levels": "[1]",
        "model.unet.head_dim": 8,
        "model.unet.norm_groups": 4,
        "data.num_frames": 4,
        "data.size": 16,
        "train.out_dir": str(out_dir),
        "train.batch_size": 2,
        "train.steps": 4,
        "train.warmup_steps": 2,
        "train.log_every": 1,
        "train.ckpt_every": 2,
        "train.sample_every": 0,
        "train.progress": False,
        "train.tensorboard": False,
        "sample.steps": 4,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny(tmp_path):
    def make(**extra):
        from kinema.config import load_config

        return load_config(None, tiny_overrides(tmp_path / "run", **extra))

    return make
