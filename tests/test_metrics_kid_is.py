"""KID and the IS-style score against torchmetrics with the same feature module."""

import pytest
import torch
from torch import nn
from torchmetrics.image.inception import InceptionScore as TMInceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from aigc.errors import AigcError
from aigc.metrics.inception_score import InceptionScore, inception_score
from aigc.metrics.kid import KernelDistance, default_subset_size, mmd2_unbiased


class Proj(nn.Module):
    def __init__(self, out, seed=1):
        super().__init__()
        self.num_features = out
        self.w = torch.randn(64, out, generator=torch.Generator().manual_seed(seed),
                             dtype=torch.float64)

    def forward(self, x):
        return torch.relu(x.double().flatten(1) @ self.w)


def _images(seed, n, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 8, 8, generator=g) * 0.8 + shift).clamp(0, 1)


def test_kid_equals_torchmetrics():
    net = Proj(16)
    real, fake = _images(0, 120), _images(1, 90, shift=0.1)
    ref = KernelInceptionDistance(feature=net, subsets=7, subset_size=50, normalize=True)
    ref.update(real, real=True)
    ref.update(fake, real=False)
    torch.manual_seed(5)  # torchmetrics draws its subsets from the global generator
    want_mean, want_std = (float(v) for v in ref.compute())
    ours = KernelDistance(subsets=7, subset_size=50, seed=5)
    for chunk in real.split(33):
        ours.update(net(chunk), real=True)
    ours.update(net(fake), real=False)
    mean, std = ours.compute()
    assert want_mean > 1e-4
    assert mean == pytest.approx(want_mean, rel=1e-6)
    assert std == pytest.approx(want_std, rel=1e-6)
    assert (mean, std) == pytest.approx(PINNED_KID, rel=1e-7)


PINNED_KID = (236.68648080994737, 58.09440882655058)


def test_default_subset_size_gives_a_real_std_and_matches_torchmetrics():
    """With n samples and subsets of all n, every subset is the whole set: std ~0. The default
    (n // 2 below 2000) draws distinct subsets; torchmetrics agrees given the same settings."""
    net = Proj(16)
    real, fake = _images(0, 80), _images(1, 80, shift=0.1)
    real_f, fake_f = net(real), net(fake)
    assert default_subset_size(80) == 40 and default_subset_size(50000) == 1000
    everything = KernelDistance(subsets=10, subset_size=80, seed=0)
    default = KernelDistance(subsets=10, subset_size=default_subset_size(80), seed=0)
    for kid in (everything, default):
        kid.update(real_f, real=True)
        kid.update(fake_f, real=False)
    mean_all, std_all = everything.compute()
    mean, std = default.compute()
    assert std_all < 1e-9 * mean_all  # the degenerate case the default avoids
    assert std > 0.01 * mean > 0
    ref = KernelInceptionDistance(feature=net, subsets=10, subset_size=40, normalize=True)
    ref.update(real, real=True)
    ref.update(fake, real=False)
    torch.manual_seed(0)
    want_mean, want_std = (float(v) for v in ref.compute())
    assert (mean, std) == pytest.approx((want_mean, want_std), rel=1e-6)
    with pytest.raises(AigcError, match="at least 4 samples"):
        default_subset_size(3)


def test_mmd_is_unbiased_near_zero_for_same_distribution():
    g = torch.Generator().manual_seed(0)
    values = [mmd2_unbiased(torch.randn(200, 4, generator=g, dtype=torch.float64),
                            torch.randn(200, 4, generator=g, dtype=torch.float64))
              for _ in range(20)]
    mean = sum(values) / len(values)
    assert abs(mean) < 3 * torch.tensor(values).std() / len(values) ** 0.5
    assert min(values) < 0 < max(values)  # unbiased: negative values occur


def test_kid_needs_enough_samples():
    kid = KernelDistance(subsets=2, subset_size=50)
    kid.update(torch.randn(60, 3), real=True)
    kid.update(torch.randn(40, 3), real=False)
    with pytest.raises(AigcError, match="at least that many generated"):
        kid.compute()


def test_inception_score_equals_torchmetrics():
    net = Proj(10, seed=2)
    imgs = _images(4, 95)
    ref = TMInceptionScore(feature=net, splits=4)
    ref.update(imgs)
    torch.manual_seed(3)
    want = tuple(float(v) for v in ref.compute())
    ours = InceptionScore(splits=4, seed=3)
    for chunk in imgs.split(10):
        ours.update(net(chunk))
    got = ours.compute()
    assert want[0] > 1.0
    assert got == pytest.approx(want, rel=1e-6)
    assert got == pytest.approx(PINNED_IS, rel=1e-7)


PINNED_IS = (1.4861307012328733, 0.09102510568925001)


def test_inception_score_bounds():
    k = 10
    confident_spread = torch.eye(k).repeat(10, 1) * 50.0  # every class, each one sure
    assert inception_score(confident_spread, splits=2, seed=None)[0] == pytest.approx(k, rel=1e-6)
    collapsed = torch.zeros(100, k)
    collapsed[:, 3] = 50.0  # always the same class
    assert inception_score(collapsed, splits=2, seed=None)[0] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(AigcError, match="at least 20 samples"):
        inception_score(torch.randn(5, k), splits=10)
