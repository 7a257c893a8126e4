"""Tiny image models for the Video LDM tests: a kinema unet3d image model written as a checkpoint, and a
random diffusers UNet2DConditionModel saved with save_pretrained (nothing is downloaded)."""

from pathlib import Path

import torch

from kinema import checkpoint as ckpt_io
from kinema.config import load_config, to_yaml
from kinema.system import build_system

TINY_UNET = {"model.unet.dim": 8, "model.unet.dim_mults": "[1,2]", "model.unet.num_res_blocks": 1,
             "model.unet.attn_levels": "[1]", "model.unet.head_dim": 8, "model.unet.norm_groups": 4}


def save_image_model(run_dir: Path, seed: int = 0, std: float = 0.0, **extra) -> Path:
    """A tiny 1-frame unet3d (an "image model") saved as a kinema checkpoint under ``run_dir``; with ``std > 0``
    every weight is re-drawn (a fresh unet3d outputs exactly 0). Returns the checkpoint directory."""
    overrides = {**TINY_UNET, "data.num_frames": 1, "data.size": 16, "train.out_dir": str(run_dir), **extra}
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    torch.manual_seed(seed)
    system = build_system(cfg)
    if std > 0:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in system.model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return ckpt_io.save_checkpoint(run_dir, 0, model_state=system.model.state_dict(), ema_state=None,
                                   trainer_state={"step": 0}, config_yaml=to_yaml(cfg), parts=system.manifest())


def save_diffusers_unet(folder: Path, seed: int = 0, cross_attention_dim: int = 8) -> Path:
    """A tiny random diffusers UNet2DConditionModel (2 levels, 8 / 16 channels, cross-attention) saved to ``folder``."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=cross_attention_dim,
                                attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    unet.save_pretrained(folder)
    return Path(folder)
