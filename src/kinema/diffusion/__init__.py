"""The math of diffusion: pure functions on tensors, no nn.Module state (DESIGN.md section 2)."""

from kinema.diffusion.guidance import guide, guided_denoiser, oscillating_guidance_weights, weight_by_logsnr
from kinema.diffusion.objective import (
    Denoiser,
    LossOutput,
    Prediction,
    diffusion_loss,
    eps_from_v,
    eps_from_x,
    loss_weight,
    output_from_prediction,
    prediction_from_output,
    sample_t,
    v_from_x_eps,
    x_from_eps,
    x_from_v,
)
from kinema.diffusion.samplers import SAMPLERS, get_sampler, sample_ddim, sample_ddpm, sample_dpmpp_2m
from kinema.diffusion.schedule import Schedule, alpha_sigma, resolution_shift, sampling_grid

__all__ = [
    "Denoiser", "LossOutput", "Prediction", "SAMPLERS", "Schedule", "alpha_sigma", "diffusion_loss",
    "eps_from_v", "eps_from_x", "get_sampler", "guide", "guided_denoiser", "loss_weight", "oscillating_guidance_weights", "weight_by_logsnr",
    "output_from_prediction", "prediction_from_output", "resolution_shift", "sample_ddim", "sample_ddpm",
    "sample_dpmpp_2m", "sample_t", "sampling_grid", "v_from_x_eps", "x_from_eps", "x_from_v",
]
