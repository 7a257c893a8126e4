"""Optimizers: AdamW (torch's) and Muon for the weight matrices with AdamW for the rest.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks"; Liu et al. 2025, "Muon is
scalable for LLM training") keeps a Nesterov momentum of each weight matrix's gradient and steps along its
orthogonalization, computed by a quintic Newton-Schulz iteration, instead of along AdamW's elementwise-normalized
gradient. A convolution kernel ``[out, in, kt, kh, kw]`` is treated as the matrix ``[out, in * kt * kh * kw]``
(as in the CIFAR-10 speed runs). The step of an ``A x B`` matrix is scaled by ``0.2 * sqrt(max(A, B))`` so that its
RMS matches a typical AdamW step (Liu et al.'s adjustment) and the AdamW learning rate carries over. Biases,
normalization gains, embedding and position tables go to AdamW, in the same optimizer object, so
checkpoints, learning-rate schedules and ``zero_grad`` work as with one AdamW.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from kinema.system import named_trainable_parameters

# the quintic's coefficients (Jordan et al. 2024): they push singular values in (0, 1] towards [0.7, 1.2] in 5 steps
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # whose weights Muon steps


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximation of ``U V^T`` for ``g = U S V^T`` (``g`` 2-D), by ``steps`` quintic Newton-Schulz
    iterations in float32 after scaling ``g`` to unit Frobenius norm (so every singular value is <= 1)."""
    if g.ndim != 2:
        raise ValueError(f"orthogonalize takes a matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


def muon_parameters(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(matrices, rest)`` of ``module``'s trainable parameters: Muon takes the weights of linear and convolution
    layers, AdamW the rest: biases, normalization gains, and parameters that are tables rather than linear maps even
    when they are 2-D (embeddings, position tables, learned null tokens)."""
    layers = {id(m.weight) for m in module.modules() if isinstance(m, LAYERS) and m.weight is not None}
    matrices, rest = [], []
    for _, p in named_trainable_parameters(module):
        (matrices if id(p) in layers and p.ndim >= 2 else rest).append(p)
    return matrices, rest


class Muon(torch.optim.Optimizer):
    """Muon for the param groups with ``muon=True``, AdamW for the others (see the module docstring).

    ``lr``, ``weight_decay`` (decoupled, as AdamW's) and the learning-rate schedule apply to both kinds of group;
    ``betas`` and ``eps`` are AdamW's, ``momentum``, ``nesterov`` and ``ns_steps`` Muon's. Every rank must hold
    whole matrices (one process or DDP; FSDP shards them)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, *, betas: tuple[float, float] = (0.9, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5) -> None:
        if lr < 0 or not 0 <= momentum < 1 or ns_steps < 1:
            raise ValueError(f"Muon needs lr >= 0, 0 <= momentum < 1 and ns_steps >= 1; got lr={lr}, "
                             f"momentum={momentum}, ns_steps={ns_steps}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, muon=False)
        super().__init__(params, defaults)

    @classmethod
    def for_module(cls, module: nn.Module, lr: float, **kwargs) -> "Muon":
        """One optimizer for ``module``: its matrices under Muon, the rest under AdamW (:func:`muon_parameters`)."""
        matrices, rest = muon_parameters(module)
        groups = [{"params": matrices, "muon": True}, {"params": rest, "muon": False}]
        return cls([g for g in groups if g["params"]], lr=lr, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["muon"]:
                    self._muon_step(p, group, lr, wd)
                else:
                    self._adamw_step(p, group, lr, wd)
        return loss

    def _muon_step(self, p: torch.Tensor, group: dict, lr: float, wd: float) -> None:
        grad = p.grad.reshape(p.shape[0], -1)
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buf = state["momentum_buffer"]
        buf.lerp_(grad, 1 - group["momentum"])
        update = grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
        update = orthogonalize(update, group["ns_steps"])
        rows, cols = update.shape
        p.mul_(1 - lr * wd)
        p.add_(update.view_as(p), alpha=-lr * 0.2 * math.sqrt(max(rows, cols)))

    def _adamw_step(self, p: torch.Tensor, group: dict, lr: float, wd: float) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        step = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
        p.mul_(1 - lr * wd)
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** step))
