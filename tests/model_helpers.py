"""Helpers shared by the model tests."""

import torch


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Re-randomize every parameter (zero-initialized ones too): a fresh backbone outputs exactly 0 by
    design, which would hide information leaks and dead paths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module
