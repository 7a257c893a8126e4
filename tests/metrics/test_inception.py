import pytest
import torch
from safetensors.torch import save_file

from kinema.metrics.inception import FIDInceptionV3, load_inception

from metrics_helpers import randomize_


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return randomize_(FIDInceptionV3(), 0)


@pytest.mark.slow
def test_random_inception_save_and_load_back(tmp_path, net):
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    # a .pth as the common port ships it, with the unused 1008-way classifier
    torch.save({**state, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}, tmp_path / "w.pth")
    x = torch.rand(2, 3, 80, 80) * 2 - 1  # the smallest size the strides allow keeps this fast
    with torch.inference_mode():
        ref = net(x)
        for name in ("w.safetensors", "w.pth"):
            assert torch.allclose(load_inception(tmp_path / name)(x), ref, atol=1e-5)
    assert ref.shape == (2, 2048) and (ref >= 0).all() and not torch.allclose(ref[0], ref[1])


@pytest.mark.slow
def test_full_size_299_batch_1(net):
    with torch.inference_mode():
        y = net(torch.zeros(1, 3, 299, 299))
    assert y.shape == (1, 2048) and torch.isfinite(y).all()


def test_errors_name_the_problem(tmp_path, net):
    state = {k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith("Mixed_7c.branch_pool")}
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"Mixed_7c\.branch_pool"):
        load_inception(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="--weights"):
        load_inception(tmp_path / "absent.pth")
