import hashlib
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kinema.metrics.i3d import (ChecksumError, InceptionI3d, NumpyOnlyUnpickler, _flatten, convert_i3d,
                                load_flax_checkpoint, load_i3d, max_pool_same, state_dict_to_flax)
from kinema.metrics.tf_ops import pad_same, same_padding

from metrics_helpers import digit_clips, random_i3d, write_flax_pickle


@pytest.mark.parametrize("n,k,s", [(4, 3, 2), (5, 3, 2), (224, 7, 2), (7, 2, 2), (9, 3, 1), (1, 7, 2)])
def test_same_padding_gives_ceil_outputs_and_puts_the_extra_pixel_after(n, k, s):
    before, after = same_padding(n, k, s)
    assert (n + before + after - k) // s + 1 == -(-n // s)
    assert after - before in (0, 1)


def test_conv_same_padding_layout():
    # a 1-channel 1x4 row convolved with a 1x3 "pick the left tap" kernel at stride 2: TF pads 0 before, 1 after
    x = torch.arange(1.0, 5.0).view(1, 1, 1, 1, 4)
    w = torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 1, 1, 3)
    out = F.conv3d(pad_same(x, (1, 1, 3), (1, 1, 2)), w, stride=(1, 1, 2))
    assert out.flatten().tolist() == [1.0, 3.0]


def test_max_pool_padding_never_wins():
    x = -torch.rand(1, 2, 3, 5, 5) - 1  # all values < -1
    y = max_pool_same(x, (3, 3, 3), (1, 1, 1))
    assert y.shape == x.shape and (y < -1).all()


@pytest.mark.slow
def test_random_i3d_through_flax_pickle_convert_and_load(tmp_path):
    net = random_i3d(0)
    src, dst = tmp_path / "i3d.ckpt", tmp_path / "i3d.safetensors"
    write_flax_pickle(net, src)
    tree = load_flax_checkpoint(src, hashlib.sha256(src.read_bytes()).hexdigest())
    flat = _flatten(tree)
    assert flat["params/Conv3d_1a_7x7/Conv_0/kernel"].shape == (7, 7, 7, 3, 64)
    assert flat["batch_stats/Mixed_5c/Branch_3/Conv3d_0b_1x1/BatchNorm_0/var"].shape == (1, 1, 1, 1, 128)
    assert flat["params/Logits/Conv3d_0c_1x1/Conv_0/bias"].shape == (400,)
    convert_i3d(src, dst, hashlib.sha256(src.read_bytes()).hexdigest())
    loaded = load_i3d(dst)
    x = torch.rand(2, 3, 9, 32, 32) * 2 - 1  # reduced size: 9 frames of 32x32
    with torch.inference_mode():
        a, b = net(x), loaded(x)
    assert a.shape == (2, 400)
    assert torch.allclose(a, b, atol=1e-5)
    assert a.std() > 0 and not torch.allclose(a[0], a[1])


def test_converter_refuses_a_wrong_sha256_without_unpickling(tmp_path):
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    src = tmp_path / "evil.ckpt"
    src.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ChecksumError, match="refusing"):
        convert_i3d(src, tmp_path / "out.safetensors")  # the default expected hash is the public file's
    assert not sentinel.exists() and not (tmp_path / "out.safetensors").exists()
    # even with its own (matching) hash, the unpickler builds nothing but numpy arrays
    with pytest.raises(pickle.UnpicklingError, match="only numpy"):
        load_flax_checkpoint(src, hashlib.sha256(src.read_bytes()).hexdigest())
    assert not sentinel.exists()


def test_numpy_only_unpickler_reads_arrays():
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    out = NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(data, protocol=4))).load()
    assert np.array_equal(out["a"], data["a"])


def test_load_names_missing_and_mismatched_weights(tmp_path):
    from safetensors.torch import save_file

    state = InceptionI3d().state_dict()
    state.pop("Mixed_4b.Branch_0.Conv3d_0a_1x1.bn.bias")
    state["Logits.Conv3d_0c_1x1.conv.bias"] = torch.zeros(10)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"Mixed_4b\.Branch_0\.Conv3d_0a_1x1\.bn\.bias.*Logits"):
        load_i3d(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="kinema assets fetch i3d"):
        load_i3d(tmp_path / "absent.safetensors")


def test_state_dict_flax_round_trip_is_exact():
    net = random_i3d(1)
    from kinema.metrics.i3d import flax_to_state_dict

    back = flax_to_state_dict(state_dict_to_flax(net.state_dict()))
    assert set(back) == set(net.state_dict())
    assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_full_size_224_path_batch_1():
    torch.manual_seed(0)
    net = InceptionI3d().eval()
    with torch.inference_mode():
        y = net(torch.rand(1, 3, 9, 224, 224) * 2 - 1)
    assert y.shape == (1, 400) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="at least 9"):
        net(torch.zeros(1, 3, 8, 32, 32))


@pytest.mark.slow
def test_real_weights_if_fetched():
    from kinema.metrics.assets import asset_path
    from kinema.metrics.features import preprocess_i3d

    path = asset_path("i3d")
    if not path.is_file():
        pytest.skip(f"real I3D weights not fetched ({path}); run `kinema assets fetch i3d`")
    net = load_i3d(path)
    clips = torch.from_numpy(digit_clips(0, 2, frames=16, size=64))
    with torch.inference_mode():
        logits = net(preprocess_i3d(clips))
    assert logits.shape == (2, 400) and torch.isfinite(logits).all()
    # not degenerate: spread-out logits that differ between clips
    assert logits.std(dim=1).min() > 0.1 and (logits[0] - logits[1]).abs().max() > 1e-3
