"""Shared builders for the metrics tests: random networks with non-trivial batch-norm statistics."""

import functools
import pickle

import numpy as np
import torch

from kinema.data.synthetic import MovingDigits
from kinema.data.io import to_uint8
from kinema.metrics.i3d import InceptionI3d, state_dict_to_flax


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random biases and batch-norm statistics (defaults are zeros / ones, which would hide layout bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")) and t.dtype.is_floating_point:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


def random_i3d(seed: int = 0) -> InceptionI3d:
    torch.manual_seed(seed)
    return randomize_(InceptionI3d(), seed)


def write_flax_pickle(model: InceptionI3d, path) -> None:
    """A synthetic checkpoint in the public file's layout: a pickle of numpy arrays in Flax naming."""
    with open(path, "wb") as f:
        pickle.dump(state_dict_to_flax(model.state_dict()), f, protocol=4)


@functools.lru_cache(maxsize=4)
def _digits(frames: int, size: int) -> MovingDigits:
    return MovingDigits(num_frames=frames, size=size, length=10_000, seed=0)


def digit_clips(start: int, num: int, frames: int = 9, size: int = 32) -> np.ndarray:
    """uint8 moving-digit clips [num, F, H, W, 1] (items start..start+num of one dataset)."""
    ds = _digits(frames, size)
    return np.stack([to_uint8(ds[i]["video"]) for i in range(start, start + num)])
