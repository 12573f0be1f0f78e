import math

import pytest
import torch

from aigc.models.vae import VAE, VAEConfig

TINY = VAEConfig(image_size=8, channels=(4, 8), hidden=16, latent_dim=3)


def test_shapes_and_ranges():
    torch.manual_seed(0)
    model = VAE(TINY)
    x = torch.rand(5, 1, 8, 8)
    assert model.sample(4, generator=torch.Generator().manual_seed(0)).shape == (4, 1, 8, 8)
    rec = model.reconstruct(x)
    assert rec.shape == x.shape and rec.min() >= 0 and rec.max() <= 1
    path = model.interpolate(x[0], x[1], steps=5)
    assert path.shape == (5, 1, 8, 8)
    torch.testing.assert_close(path[0], model.reconstruct(x[:1])[0])
    torch.testing.assert_close(path[-1], model.reconstruct(x[1:2])[0])


def test_kl_matches_monte_carlo():
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.2, -0.7]])
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(VAE.kl(mu, logvar), expected)


def test_negative_elbo_is_reconstruction_plus_kl_and_positive():
    torch.manual_seed(0)
    model = VAE(TINY)
    x = torch.bernoulli(torch.rand(6, 1, 8, 8))
    total, rec, kl = model.negative_elbo(x)
    torch.testing.assert_close(total, rec + kl)
    assert (rec > 0).all() and (kl >= 0).all()


def test_gaussian_likelihood_matches_torch_normal():
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_size=8, channels=(4,), hidden=8, latent_dim=2, likelihood="gaussian"))
    with torch.no_grad():
        model.log_sigma.fill_(math.log(0.3))
    out, x = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    expected = torch.distributions.Normal(out, 0.3).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(model._log_likelihood(out, x), expected)


def test_kl_warmup_weights_the_kl_term():
    cfg = VAEConfig(image_size=8, channels=(4,), hidden=8, latent_dim=2, kl_warmup_steps=10,
                    binarize=False)
    torch.manual_seed(0)
    model = VAE(cfg).train()
    batch = {"image": torch.rand(4, 1, 8, 8)}
    torch.manual_seed(1)
    first = model.loss(batch)  # step 0: beta = 0, reconstruction only
    torch.manual_seed(1)
    _, rec, _ = model.negative_elbo(batch["image"])
    torch.testing.assert_close(first, rec.mean())
    assert int(model.steps_seen) == 1


@pytest.mark.parametrize("bad", [{"channels": ()}, {"kl_warmup_steps": -1}, {"hidden": 0}])
def test_bad_configs(bad):
    with pytest.raises(ValueError):
        VAEConfig(**bad)
