"""A tiny random diffusers AutoencoderKL saved with save_pretrained (nothing is downloaded), and the overrides
of a tiny unet3d in its latent space, for the adapter and latent-cache tests."""

from pathlib import Path

import torch

TINY_UNET = {"model.unet.dim": 8, "model.unet.dim_mults": "[1,2]", "model.unet.num_res_blocks": 1,
             "model.unet.attn_levels": "[1]", "model.unet.head_dim": 8, "model.unet.norm_groups": 4}


def save_diffusers_vae(folder: Path, seed: int = 0, latent_channels: int = 4, scaling_factor: float = 0.5,
                       **config) -> Path:
    """A 2-level AutoencoderKL (8 / 16 channels, spatial factor 2) with random weights, saved to ``folder``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=latent_channels, norm_num_groups=8, sample_size=16,
                        scaling_factor=scaling_factor, **config)
    vae.save_pretrained(folder)
    return Path(folder)


def latent_unet_overrides(out_dir, autoencoder, **extra) -> list[str]:
    """A tiny unet3d on the 4-channel latents of ``autoencoder`` for 2 frames of 8x8 pixels."""
    base = {**TINY_UNET, "model.space": "latent", "model.autoencoder": str(autoencoder), "model.unet.in_channels": 4,
            "data.num_frames": 2, "data.size": 8, "train.out_dir": str(out_dir), "train.batch_size": 2,
            "train.steps": 2, "train.warmup_steps": 1, "train.log_every": 1, "train.ckpt_every": 2,
            "train.sample_every": 0, "train.progress": False, "train.tensorboard": False, "sample.steps": 2}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
