"""VAE and GMM through the common model interface: determinism, save/load, any channels and size, bias."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import digits as load_digits
from conftest import make_model

from imgcollapse.data import ImageSet
from imgcollapse.data.transforms import resize, to_channels
from imgcollapse.models.gmm import GMM
from imgcollapse.models.vae import level_sizes


def tiny(kind: str, shape: tuple[int, int, int], temperature: float = 1.0, **kw):
    """A model small enough to fit in well under a second."""
    if kind == "vae":
        kw = {"train_steps": 15, "batch_size": 16, "warmup_steps": 2} | kw
        return make_model("vae", shape, sampling={"batch_size": 4, "temperature": temperature}, **kw)
    return make_model("gmm", shape, sampling={"temperature": temperature}, **({"n_components": 3, "max_iter": 20} | kw))


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return load_digits().train


def reshaped(data: ImageSet, channels: int, size: int) -> ImageSet:
    """The digits as `channels`-channel size×size images: what other datasets will hand the models."""
    return ImageSet(to_channels(resize(data.images, size), channels), data.labels, data.class_names)


@pytest.mark.parametrize("kind", ["vae", "gmm"])
def test_fit_and_sample_are_deterministic_for_a_seed(kind, digits):
    a, b = tiny(kind, (1, 8, 8)), tiny(kind, (1, 8, 8))
    assert a.fit(digits, seed=1)["train_loss"] == b.fit(digits, seed=1)["train_loss"]
    first = a.sample(10, seed=5)
    assert torch.equal(first.images, b.sample(10, seed=5).images)
    assert torch.equal(first.images, a.sample(10, seed=5).images)
    assert not torch.equal(first.images, a.sample(10, seed=6).images)
    assert torch.equal(a.sample(3, seed=5).images, first.images[:3])  # image i depends on (seed, i) only
    assert first.labels is None and a.num_classes is None  # unconditional: the chain labels them
    other = tiny(kind, (1, 8, 8))
    other.fit(digits, seed=2)
    assert not torch.equal(first.images, other.sample(10, seed=5).images)  # the fit seed matters


@pytest.mark.parametrize("kind", ["vae", "gmm"])
def test_save_load_gives_identical_samples(kind, digits, tmp_path):
    model = tiny(kind, (1, 8, 8))
    model.fit(digits, seed=0)
    model.save(tmp_path / "model")
    again = type(model).load(tmp_path / "model")
    assert again.config == model.config and again.sampling == model.sampling
    assert torch.equal(model.sample(12, seed=3).images, again.sample(12, seed=3).images)


@pytest.mark.parametrize("kind", ["vae", "gmm"])
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 8), (3, 7), (1, 13)])
def test_any_channels_and_size(kind, channels, size, digits):
    data = reshaped(digits.subset(np.arange(200)), channels, size)
    kw = {"pca_components": 12} if kind == "gmm" and channels * size * size > 100 else {}
    model = tiny(kind, (channels, size, size), **kw)
    stats = model.fit(data, seed=0)
    assert np.isfinite(stats["train_loss"])
    out = model.sample(6, seed=0)
    assert out.images.shape == (6, channels, size, size) and out.images.dtype == torch.uint8


@pytest.mark.parametrize("kind", ["vae", "gmm"])
def test_wrong_image_shape_is_refused(kind, digits):
    with pytest.raises(ValueError, match="shape"):
        tiny(kind, (3, 8, 8)).fit(digits, seed=0)


def test_vae_level_sizes_cover_odd_sizes():
    assert level_sizes(8, 8, 2) == [(8, 8), (4, 4), (2, 2)]
    assert level_sizes(7, 13, 2) == [(7, 13), (4, 7), (2, 4)]


def test_gmm_with_one_component_is_the_data_gaussian(digits):
    """One full-covariance component is the maximum-likelihood Gaussian: the sample mean and covariance."""
    model = tiny("gmm", (1, 8, 8), n_components=1, reg_covar=1e-6, max_iter=100)
    model.fit(digits, seed=0)
    x = (digits.images.flatten(1).double() / 127.5 - 1).numpy()  # the model converts in float32: atol 1e-6
    np.testing.assert_allclose(model.mixture.means_[0], x.mean(0), atol=1e-6)
    np.testing.assert_allclose(model.mixture.covariances_[0], np.cov(x, rowvar=False, bias=True) + 1e-6 * np.eye(64),
                               atol=1e-6)


def test_gmm_temperature_scales_the_spread(digits):
    """MAD's sampling bias for Gaussians: lower temperature, samples closer to their component means."""
    spreads = []
    for temperature in (1.0, 0.25):
        model = tiny("gmm", (1, 8, 8), n_components=1, temperature=temperature, max_iter=100)
        model.fit(digits, seed=0)
        spreads.append(model.sample(500, seed=0).images.float().std(0).mean().item())
    assert spreads[1] < 0.7 * spreads[0]


def test_gmm_pca_reconstructs_through_the_subspace(digits, tmp_path):
    model = tiny("gmm", (1, 8, 8), n_components=2, pca_components=10, max_iter=100)
    model.fit(digits, seed=0)
    assert model.mixture.means_.shape == (2, 10) and model.dim == 10
    model.save(tmp_path / "m")
    again = GMM.load(tmp_path / "m")
    x = (digits.images[:50].flatten(1).double() / 127.5 - 1).numpy()
    # the loaded sklearn objects work as fitted ones: same log-likelihoods of the same data
    np.testing.assert_allclose(again.mixture.score_samples(again.pca.transform(x)),
                               model.mixture.score_samples(model.pca.transform(x)))


def test_vae_temperature_scales_the_latent(digits):
    """z = temperature · ε: a tiny temperature decodes every seed to nearly the same (mean) image."""
    model = tiny("vae", (1, 8, 8), train_steps=60)
    model.fit(digits, seed=0)
    spread = {}
    for temperature in (1.0, 0.01):
        model.sampling.temperature = temperature
        spread[temperature] = model.sample(200, seed=0).images.float().std(0).mean().item()
    assert spread[0.01] < 0.2 * spread[1.0]


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_vae_learns(digits, likelihood):
    """Training lowers the negative ELBO: the loss the shared loop reports is the VAE's objective."""
    short = tiny("vae", (1, 8, 8), train_steps=5, likelihood=likelihood)
    longer = tiny("vae", (1, 8, 8), train_steps=150, lr=5e-3, likelihood=likelihood)
    assert longer.fit(digits, seed=0)["train_loss"] < short.fit(digits, seed=0)["train_loss"] - 0.02
