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


@pytest.mark.slow
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


@pytest.mark.slow
def test_vae_temperature_scales_the_latent(digits):
    """z = temperature · ε: a tiny temperature decodes every seed to nearly the same (mean) image."""
    model = tiny("vae", (1, 8, 8), train_steps=60)
    model.fit(digits, seed=0)
    spread = {}
    for temperature in (1.0, 0.01):
        model.sampling.temperature = temperature
        spread[temperature] = model.sample(200, seed=0).images.float().std(0).mean().item()
    assert spread[0.01] < 0.2 * spread[1.0]


@pytest.mark.slow
@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_vae_learns(digits, likelihood):
    """Training lowers the negative ELBO: the loss the shared loop reports is the VAE's objective."""
    short = tiny("vae", (1, 8, 8), train_steps=5, likelihood=likelihood)
    longer = tiny("vae", (1, 8, 8), train_steps=150, lr=5e-3, likelihood=likelihood)
    assert longer.fit(digits, seed=0)["train_loss"] < short.fit(digits, seed=0)["train_loss"] - 0.02


# A population (chain.population) saved and loaded back ------------------------------------------------------------
def test_a_saved_population_loads_back_and_samples_the_same_images(digits, tmp_path):
    import json

    from imgcollapse.errors import DamagedFile
    from imgcollapse.models.population import POPULATION_FILE, Population

    population = Population([("gmm", tiny("gmm", (1, 8, 8))), ("vae", tiny("vae", (1, 8, 8), train_steps=3)),
                             ("gmm", tiny("gmm", (1, 8, 8), n_components=2))])
    population.fit(digits.subset(np.arange(200)), seed=4)
    population.save(tmp_path / "model")
    again = Population.load(tmp_path / "model")
    assert again.names == ["gmm", "vae", "gmm"] and again.labels() == ["gmm0", "vae", "gmm2"]
    assert [type(m).__name__ for m in again.models] == ["GMM", "VAE", "GMM"]
    assert again.models[2].config.n_components == 2  # each member its own config, in the saved order
    first, loaded = population.sample(11, seed=7), again.sample(11, seed=7)
    assert torch.equal(first.images, loaded.images)
    assert loaded.members == first.members == [("gmm0", 0, 4), ("vae", 4, 8), ("gmm2", 8, 11)]
    assert loaded.subset([0, 1]).members == [] and ImageSet(loaded.images).members == []  # blocks of these only

    roster = tmp_path / "model" / POPULATION_FILE
    record = json.loads(roster.read_text())
    for damage in ("{\"members\": [", "{}", json.dumps({"members": []}),
                   json.dumps({"members": [{**record["members"][0], "class": "imgcollapse.models.gmm.Nope"}]}),
                   json.dumps({"members": [{**record["members"][0], "folder": "../elsewhere"}]})):
        roster.write_text(damage)
        with pytest.raises(DamagedFile, match=POPULATION_FILE) as e:
            Population.load(tmp_path / "model")
        assert e.value.path == roster
    roster.unlink()
    with pytest.raises(DamagedFile, match="No such file"):
        Population.load(tmp_path / "model")


def test_member_blocks_outside_the_images_are_refused():
    with pytest.raises(ValueError, match=r"member 'vae'.s block \[2, 5\) is not within 4 images"):
        ImageSet(torch.zeros((4, 1, 2, 2), dtype=torch.uint8), members=[("gmm", 0, 2), ("vae", 2, 5)])
