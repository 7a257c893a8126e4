"""The joint-training temporal mask must not force SDPA off its fused kernel, and the bias expanded
over the H*W positions must never be materialized (ops are watched with a TorchDispatchMode).

On CPU this holds without gradients (sampling): with a bias that needs a gradient (the learned
relative position bias in training) PyTorch's CPU flash kernel declines and the math path runs,
whose F x F scores per position are no bigger than the bias anyway. On CUDA the memory-efficient
kernel takes the stride-0 bias in training too: SDPA checks only that the bias's strides are
multiples of its alignment (0 is) and expands it as a view; its backward writes the bias gradient
at full [(B heads), H*W, F, F] size (padded to 16 columns), about 16 / head_dim of q's size,
which autograd then sums over the positions.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kinema.conditioning import Conditioning
from kinema.models.attention import TemporalAttention


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []  # (op name, output tensors)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.calls.append((func.__name__, [t for t in outs if isinstance(t, torch.Tensor)]))
        return out


def test_masked_temporal_attention_uses_the_fused_kernel_without_materializing_the_bias():
    b, c, f, h, w = 2, 16, 4, 8, 8  # head_dim 8 != F, so q / k / v / output never share the bias's shape
    layer = TemporalAttention(c, head_dim=8, norm_groups=2).eval()
    heads = layer.heads
    x = torch.randn(b, c, f, h, w)
    cond = Conditioning(frame_segments=torch.tensor([[0, 0, 1, 2], [0, 0, 0, 0]]))
    log = OpLog()
    with torch.no_grad(), log:  # no_grad (not inference_mode): the mode sees the kernel SDPA dispatches to
        layer(x, cond)
    names = [name for name, _ in log.calls]
    assert any(n.startswith("_scaled_dot_product_flash_attention") for n in names), names
    assert not any("softmax" in n for n in names), "the math path ran"
    expanded = (b * heads, h * w, f, f)
    for name, outs in log.calls:
        for t in outs:
            if tuple(t.shape) == expanded:
                assert t.stride(1) == 0, f"{name} materialized the {expanded} bias"
            if t.shape[-2:] == (f, f):
                assert t.untyped_storage().nbytes() < b * heads * h * w * f * f * t.element_size(), \
                    f"{name} wrote an [.., F, F] tensor as large as the expanded bias: {tuple(t.shape)}"
