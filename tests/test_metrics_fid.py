"""FID against torchmetrics' FrechetInceptionDistance given the same feature module."""

import pytest
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from aigc.errors import AigcError
from aigc.metrics.fid import FrechetDistance, GaussianStatistics, frechet_distance


class TinyFeatures(nn.Module):
    """A fixed random projection of 8x8 grey images to 16 float64 features."""

    num_features = 16

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(64, 16).double()
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(16, 64, generator=torch.Generator().manual_seed(1),
                                               dtype=torch.float64))
            self.proj.bias.zero_()

    def forward(self, x):
        return torch.tanh(self.proj(x.double().flatten(1)))


def _images(seed, n, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 8, 8, generator=g) * 0.8 + shift).clamp(0, 1)


def _ours(net, real, fake, batch=50):
    fid = FrechetDistance()
    with torch.no_grad():
        for i in range(0, len(real), batch):
            fid.update(net(real[i:i + batch]), real=True)
        for i in range(0, len(fake), batch):
            fid.update(net(fake[i:i + batch]), real=False)
    return fid.compute()


def test_fid_equals_torchmetrics_with_same_feature_module():
    net = TinyFeatures()
    real, fake = _images(0, 300), _images(1, 200, shift=0.15)
    ref = FrechetInceptionDistance(feature=net, normalize=True)
    ref.update(real, real=True)
    ref.update(fake, real=False)
    expected = float(ref.compute())
    assert expected > 0.01
    assert _ours(net, real, fake) == pytest.approx(expected, rel=1e-6)


def test_fid_independent_of_batch_size_and_pinned():
    net = TinyFeatures()
    real, fake = _images(0, 300), _images(1, 200, shift=0.15)
    values = [_ours(net, real, fake, batch=b) for b in (1, 7, 64, 300)]
    assert max(values) - min(values) < 1e-9 * values[0]
    assert values[0] == pytest.approx(PINNED_FID, rel=1e-7)


PINNED_FID = 0.502125234509978


def test_fid_of_a_set_against_itself_is_zero():
    net = TinyFeatures()
    x = _images(3, 200)
    assert abs(_ours(net, x, x)) < 1e-9


def test_running_statistics_match_numpy():
    x = torch.randn(100, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    stats = GaussianStatistics()
    for chunk in x.split(13):
        stats.update(chunk)
    mean, cov = stats.compute()
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(cov, torch.cov(x.T))


def test_frechet_distance_of_known_gaussians():
    # N(0, I) vs N(m, 4I) in d dims: |m|^2 + d (1 + 4 - 2*2) = |m|^2 + d
    d = 3
    mu2 = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    value = frechet_distance(torch.zeros(d), torch.eye(d), mu2, 4 * torch.eye(d))
    assert value == pytest.approx(9.0 + d, abs=1e-12)


def test_fid_bad_input_is_loud():
    fid = FrechetDistance()
    with pytest.raises(AigcError, match="NaN"):
        fid.update(torch.tensor([[0.0, float("nan")]]), real=True)
    with pytest.raises(AigcError, match="2-d"):
        fid.update(torch.zeros(4), real=True)
    fid.update(torch.randn(5, 3), real=True)
    fid.update(torch.randn(1, 3), real=False)
    with pytest.raises(AigcError, match="at least 2 generated"):
        fid.compute()
    with pytest.raises(AigcError, match="dimensions"):
        fid.update(torch.randn(5, 4), real=False)
