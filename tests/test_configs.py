"""Every config composes, validates and instantiates: each model, regime and paper preset, with and without
debug=smoke, and every value a preset's sweep names. Bad values of the new keys fail with the key's name."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONF_DIR, compose_config
from hydra.utils import get_object
from omegaconf import OmegaConf

from imgcollapse.config import ConfigError, build, validate
from imgcollapse.models.ddpm import DDPM
from imgcollapse.models.gmm import GMM, GMMConfig
from imgcollapse.models.vae import VAE, VAEConfig
from imgcollapse.regimes import Regime

MODELS = {"ddpm": DDPM, "vae": VAE, "gmm": GMM}
REGIMES = sorted(p.stem for p in Path(CONF_DIR, "regime").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("*.yaml"))


def build_all(*overrides: str):
    """Compose, validate and build the model and regime, as run.py does."""
    cfg = compose_config(*overrides)
    config = validate(cfg)
    shape = (config.dataset.channels, config.dataset.image_size, config.dataset.image_size)
    model = build(config.model, image_shape=shape, sampling=config.sampling)
    return config, model, build(config.regime), cfg


def test_the_groups_are_all_here():
    assert set(MODELS) == {p.stem for p in Path(CONF_DIR, "model").glob("*.yaml")}
    assert REGIMES == ["accumulate", "augment", "contaminated", "fresh", "real_plus", "replace"]
    assert len(EXPERIMENTS) >= 11


@pytest.mark.slow
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_and_regime_instantiates_under_smoke(model, regime):
    config, built, built_regime, _ = build_all(f"model={model}", f"regime={regime}", "debug=smoke")
    assert isinstance(built, MODELS[model]) and isinstance(built_regime, Regime)
    assert built_regime.kind == regime
    # smoke shrinks every model through its own conf/debug_model file
    assert config.generation == 2 and config.num_synthetic == 64
    assert getattr(built.config, "train_steps", 20) <= 20 and getattr(built.config, "max_iter", 10) <= 10


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_instantiates_at_full_scale(model):
    config, built, _, _ = build_all(f"model={model}")
    assert isinstance(built, MODELS[model]) and config.generation == 10
    assert getattr(built.config, "train_steps", 600) >= 600 and getattr(built.config, "max_iter", 100) >= 100


@pytest.mark.slow
@pytest.mark.parametrize("debug", [None, "smoke"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_instantiates(experiment, debug):
    overrides = [f"experiment={experiment}"] + ([f"debug={debug}"] if debug else [])
    config, model, regime, _ = build_all(*overrides)
    text = Path(CONF_DIR, "experiment", f"{experiment}.yaml").read_text()
    assert "What you should see" in text  # every preset says what a user should see
    assert config.generation == 2 if debug else config.generation >= 10


def chosen(cfg, key: str) -> str:
    """The value a composed config holds for a sweep key, spelled as on the command line."""
    if key == "regime":
        return get_object(cfg.regime._target_).kind
    value = OmegaConf.select(cfg, key)
    return "null" if value is None else str(value)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_sweep_value_of_a_preset_validates(experiment):
    """`-m` runs each value of the preset's hydra.sweeper.params: each must compose, validate and take effect."""
    params = OmegaConf.load(Path(CONF_DIR, "experiment", f"{experiment}.yaml")).get("hydra", {})
    params = params.get("sweeper", {}).get("params", {})
    for key, values in params.items():
        for value in str(values).split(","):
            *_, cfg = build_all(f"experiment={experiment}", f"{key}={value}", "debug=smoke")
            assert chosen(cfg, key) == value


def test_preset_choices_reach_the_models():
    config, model, regime, _ = build_all("experiment=gaussian_theory")
    assert isinstance(config.model, GMMConfig) and model.config.n_components == 1 and config.num_synthetic == 100
    config, model, regime, _ = build_all("experiment=shumailov_real10")
    assert isinstance(config.model, VAEConfig) and regime.kind == "augment" and regime.config.real_fraction == 0.1
    config, model, regime, _ = build_all("experiment=mad_sampling_bias")
    assert model.num_classes == 10 and model.sampling.guidance == 1.0
    config, model, regime, _ = build_all("experiment=feng_curation")
    assert regime.config.curation == "verify" and regime.num_candidates(100) == 200 and model.num_classes == 10
    config, model, regime, _ = build_all("experiment=mad_sampling_bias_gaussian", "sampling.temperature=0.7")
    assert model.sampling.temperature == 0.7  # the model reads the one sampling node


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model=gmm", "model.covariance_type=bogus"], "model.covariance_type"),
        (["model=gmm", "model.pca_components=0"], "model.pca_components"),
        (["model=gmm", "model.pca_components=65"], "model.pca_components"),
        (["model=gmm", "model.n_components=0"], "model.n_components"),
        (["model=gmm", "dataset.image_size=32", "dataset.channels=3"], "model.pca_components"),
        (["model=vae", "model.latent_dim=0"], "model.latent_dim"),
        (["model=vae", "model.beta=0"], "model.beta"),
        (["model=vae", "model.likelihood=poisson"], "model.likelihood"),
        (["model=vae", "model.block_out_channels=[]"], "model.block_out_channels"),
        (["regime.curation=bogus"], "regime.curation"),
        (["regime.keep_fraction=0"], "regime.keep_fraction"),
        (["regime.keep_fraction=1.5"], "regime.keep_fraction"),
        (["sampling.conditions=bogus"], "sampling.conditions"),
        (["model.num_classes=1"], "model.num_classes"),
        (["sampling.guidance=1.0"], "sampling.guidance"),  # the default ddpm is unconditional
        (["model=vae", "sampling.guidance=1.0"], "sampling.guidance"),
        (["sampling.temperature=0.5"], "sampling.temperature"),  # diffusion has no temperature
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config("debug=smoke", *overrides))
    assert error.value.key == key and key in str(error.value)


def test_sampling_bias_each_model_understands_is_accepted():
    validate(compose_config("model=vae", "sampling.temperature=0.5"))
    validate(compose_config("model=gmm", "sampling.temperature=0.5"))
    validate(compose_config("model.num_classes=10", "sampling.guidance=2.0"))


@pytest.mark.parametrize("overrides", [
    ("seed=3", "generation=4"),
    ("model=vae", "model.lr=0.01", "sampling.temperature=0.5", "regime=accumulate", "regime.subsample=300"),
    ("debug=smoke", "model.block_out_channels=[16,16]", "metrics.extractors=[classifier]", "threads=null"),
    ("model=gmm", "model.pca_components=null", "num_synthetic=64", "dataset.long_tail=0.5"),
    ("experiment=mad_sampling_bias", "sampling.guidance=3.0", "regime.curation=reward"),
])
def test_the_suites_shortcut_composes_the_tree_hydra_composes(overrides, monkeypatch):
    """conftest.compose_config sets plain values on a cached composition: the tree must be Hydra's, value and type."""
    import conftest

    from imgcollapse.config import compose

    compose_config(*overrides)  # the group choices' tree, cached
    calls = []
    monkeypatch.setattr(conftest, "compose", lambda *o: calls.append(o) or compose(*o))
    fast = compose_config(*overrides)
    assert calls == []  # the shortcut, not a fallback to Hydra
    real = compose(*overrides)
    assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(real)
    assert OmegaConf.to_object(fast) == OmegaConf.to_object(real)
