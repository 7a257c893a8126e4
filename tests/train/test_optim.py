import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kinema.train.loop import Trainer
from kinema.train.optim import Muon, muon_parameters, orthogonalize


@pytest.mark.parametrize("shape", [(8, 32), (32, 8), (16, 16)])
def test_orthogonalize_flattens_the_spectrum(shape):
    """Newton-Schulz maps every singular value into the quintic's band around 1 (Jordan et al.: about [0.7, 1.2])
    and keeps the singular vectors: the result is close to U V^T."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g = g @ torch.diag(torch.logspace(-1, 0, shape[1]))  # singular values spread over a factor of ~10 and more
    o = orthogonalize(g)
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.5 and s.max() < 1.3, s
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cosine = (o * (u @ vh)).sum() / (o.norm() * (u @ vh).norm())
    assert cosine > 0.95
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\)"):
        orthogonalize(torch.zeros(2, 3, 4))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.conv = nn.Conv3d(3, 6, (1, 3, 3), padding=(0, 1, 1))
        self.norm = nn.GroupNorm(2, 6)
        self.lin = nn.Linear(6, 4)
        self.table = nn.Parameter(torch.zeros(2, 6))  # a learned null token: a table, not a linear map
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_matrices_go_to_muon_the_rest_to_adamw():
    net = _Net()
    matrices, rest = muon_parameters(net)
    assert {id(p) for p in matrices} == {id(net.conv.weight), id(net.lin.weight)}
    assert {id(p) for p in rest} == {id(net.emb.weight), id(net.conv.bias), id(net.norm.weight), id(net.norm.bias),
                                     id(net.lin.bias), id(net.table)}


def test_the_adamw_groups_match_torch_adamw():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    ours = Muon([{"params": list(a.parameters()), "muon": False}], lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    ref = torch.optim.AdamW(b.parameters(), lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    for step in range(5):
        x = torch.randn(7, 5)
        for net, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_muon_step_is_the_scaled_orthogonalized_nesterov_momentum():
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 6, (1, 3, 3), bias=False)
    w0 = conv.weight.detach().clone()
    opt = Muon([{"params": [conv.weight], "muon": True}], lr=0.02, momentum=0.9)
    grads = [torch.randn_like(w0) for _ in range(2)]
    buf = torch.zeros(6, 36)
    expected = w0.clone()
    for g in grads:
        conv.weight.grad = g.clone()
        opt.step()
        g2 = g.reshape(6, 36)
        buf = 0.9 * buf + 0.1 * g2
        nesterov = 0.1 * g2 + 0.9 * buf
        expected = expected - 0.02 * 0.2 * math.sqrt(36) * orthogonalize(nesterov).reshape(w0.shape)
    torch.testing.assert_close(conv.weight.detach(), expected, rtol=1e-5, atol=1e-6)


def test_muon_refuses_bad_settings():
    with pytest.raises(ValueError, match="momentum=1.5"):
        Muon([nn.Parameter(torch.zeros(2, 2))], momentum=1.5)


def test_a_muon_run_resumes_exactly(tiny, tmp_path):
    """train.optimizer=muon in the trainer: matrices under Muon and the rest under AdamW, every weight moves, and
    the optimizer state (momentum buffers and AdamW moments) round-trips through the checkpoint."""
    extra = {"train.optimizer": "muon", "train.steps": 6, "train.ckpt_every": 3, "train.lr": 3e-3}
    full = Trainer(tiny(**{**extra, "train.out_dir": str(tmp_path / "a")}))
    assert isinstance(full.optimizer, Muon)
    kinds = {g["muon"]: len(g["params"]) for g in full.optimizer.param_groups}
    assert kinds[True] > 0 and kinds[False] > 0
    w0 = {k: v.clone() for k, v in full.model.state_dict().items()}
    full.fit()
    first = Trainer(tiny(**{**extra, "train.out_dir": str(tmp_path / "b"), "train.steps": 3}))
    first.fit()
    resumed = Trainer(tiny(**{**extra, "train.out_dir": str(tmp_path / "b")}), resume=True)
    resumed.fit()
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    params = dict(full.model.named_parameters())
    unmoved = [k for k, p in params.items() if p.requires_grad and torch.equal(p.detach(), w0[k])]
    assert not unmoved


def test_muon_refuses_sharded_weights(tiny):
    """FSDP shards each matrix across ranks; Muon needs whole ones, so the trainer says so."""
    fake = SimpleNamespace(cfg=tiny(**{"train.optimizer": "muon"}), parallel="fsdp", device=torch.device("cpu"))
    with pytest.raises(ValueError, match="train.parallel=fsdp"):
        Trainer._optimizer(fake, nn.Linear(2, 2), 1e-3)
