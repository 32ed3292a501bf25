"""Bad input fails at start with one message naming the key, the value and what is allowed.

A table of bad configs composed in-process through the real config tree and checked by `config.validate`;
the checks that need the loaded data (`config.validate_data`); and a few through the real command line,
for the exit status and the absence of a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, compose_config, run_chain, run_cli
from PIL import Image

from imgcollapse.config import ConfigError, validate, validate_data

# (overrides, key, value as the message shows it, a piece of what is allowed)
BAD = [
    # Top level
    (("generation=-1",), "generation", -1, "≥ 0"),
    (("seed=-3",), "seed", -3, "[0, 2**32)"),
    (("seed=4294967296",), "seed", 4294967296, "[0, 2**32)"),
    (("num_synthetic=0",), "num_synthetic", 0, "> 0"),
    (("threads=0",), "threads", 0, "null (all cores) or > 0"),
    (("resume=always",), "resume", "always", "one of ['check', 'force']"),
    (("cache_dir=''",), "cache_dir", "", "a folder"),
    # Datasets
    (("dataset.image_size=0",), "dataset.image_size", 0, "> 0"),
    (("dataset.channels=2",), "dataset.channels", 2, "1 or 3"),
    (("dataset.num_heldout=5",), "dataset.num_heldout", 5, "[10, 1787]"),
    (("dataset.num_heldout=1790",), "dataset.num_heldout", 1790, "[10, 1787]"),
    (("dataset.long_tail=-1",), "dataset.long_tail", -1.0, "Zipf exponent ≥ 0"),
    (("dataset.split_seed=-1",), "dataset.split_seed", -1, "[0, 2**32)"),
    (("dataset=folder",), "dataset.path", None, "a folder of images"),
    (("dataset=folder", "dataset.path=/x", "dataset.heldout_fraction=1.5"), "dataset.heldout_fraction", 1.5, "(0, 1)"),
    (("dataset=mnist", "dataset.limit=5"), "dataset.limit", 5, "≥ 10"),
    (("dataset=mnist", "dataset.name=svhn"), "dataset.name", "svhn", "one of ['cifar10', 'fashion_mnist', 'mnist']"),
    # Model
    (("model.train_steps=0",), "model.train_steps", 0, "> 0"),
    (("model.batch_size=0",), "model.batch_size", 0, "> 0"),
    (("model.lr=0",), "model.lr", 0.0, "> 0"),
    (("model.warmup_steps=-1",), "model.warmup_steps", -1, "[0, model.train_steps=600]"),
    (("model.warmup_steps=5000",), "model.warmup_steps", 5000, "[0, model.train_steps=600]"),
    (("model.layers_per_block=0",), "model.layers_per_block", 0, "≥ 1"),
    (("model.block_out_channels=[]",), "model.block_out_channels", [], "non-empty list"),
    (("model.block_out_channels=[16,16,16,16,16]",), "dataset.image_size", 8, "a multiple of 16"),  # 8 -> 4 -> 2 -> 1
    (("model.ema_decay=1.5",), "model.ema_decay", 1.5, "null or in (0, 1)"),
    (("model.grad_clip=0",), "model.grad_clip", 0.0, "null (no clipping) or > 0"),
    (("model.beta_schedule=cosine",), "model.beta_schedule", "cosine", "'squaredcos_cap_v2'"),
    (("model.num_train_timesteps=1",), "model.num_train_timesteps", 1, "≥ 2"),
    (("model.prediction_type=sample",), "model.prediction_type", "sample", "['epsilon', 'v_prediction']"),
    (("model.snr_gamma=0",), "model.snr_gamma", 0.0, "null or > 0"),
    (("model.num_classes=1",), "model.num_classes", 1, "(> 1)"),
    (("model.class_dropout=1",), "model.class_dropout", 1.0, "[0, 1)"),
    (("model=vae", "model.likelihood=poisson"), "model.likelihood", "poisson", "['gaussian', 'bernoulli']"),
    (("model=vae", "model.warmup_steps=5000"), "model.warmup_steps", 5000, "[0, model.train_steps=1500]"),
    (("model=gmm", "model.covariance_type=round"), "model.covariance_type", "round", "'full', 'tied', 'diag'"),
    (("model=gmm", "model.reg_covar=0"), "model.reg_covar", 0.0, "> 0"),
    (("model=gmm", "model.max_iter=0"), "model.max_iter", 0, "> 0"),
    # Sampling
    (("sampling.sampler=euler",), "sampling.sampler", "euler", "['ddim', 'dpm++']"),
    (("sampling.steps=0",), "sampling.steps", 0, "> 0"),
    (("sampling.steps=2000",), "sampling.steps", 2000, "at most model.num_train_timesteps=1000"),
    (("sampling.batch_size=0",), "sampling.batch_size", 0, "> 0"),
    (("model.num_classes=10", "sampling.guidance=-1"), "sampling.guidance", -1.0, "≥ 0"),
    (("sampling.guidance=2",), "sampling.guidance", 2.0, "unless the model is class-conditional"),
    (("model=vae", "sampling.temperature=0"), "sampling.temperature", 0.0, "> 0"),
    # a key no model of the chain reads is refused (it would be ignored), naming the keys that are read
    (("sampling.temperature=0.5",), "sampling.temperature", 0.5, "1.0 (its default): no model this chain trains reads"),
    (("model=vae", "sampling.steps=50"), "sampling.steps", 50, "batch_size (vae), temperature (vae)"),
    (("model=vae", "sampling.sampler=ddim"), "sampling.sampler", "ddim", "no model this chain trains reads it"),
    (("model=gmm", "sampling.batch_size=64"), "sampling.batch_size", 64, "temperature (gmm)"),
    (("sampling.conditions=uniform",), "sampling.conditions", "uniform", "no model this chain trains reads it"),
    (("sampling.conditions=rare",), "sampling.conditions", "rare", "['real', 'uniform', 'train']"),
    # Regimes
    (("regime=fresh", "regime.real_fraction=-0.1"), "regime.real_fraction", -0.1, "[0, 1]"),
    (("regime=augment", "regime.real_fraction=10"), "regime.real_fraction", 10.0, "[0, 1]"),
    (("regime=accumulate", "regime.subsample=0"), "regime.subsample", 0, "null or an integer > 0"),
    (("regime.curation=best",), "regime.curation", "best", "['none', 'reward', 'confidence', 'condition', 'verify']"),
    (("regime.verify_threshold=1.0",), "regime.verify_threshold", 1.0, "[0, 1)"),
    (("regime.verifier_epochs=0",), "regime.verifier_epochs", 0, ">= 1"),
    (("regime.keep_fraction=1.5",), "regime.keep_fraction", 1.5, "(0, 1]"),
    # Sizes that must fit each other
    (("debug=smoke", "num_synthetic=8"), "num_synthetic", 8, "at least model.batch_size=16"),
    (("debug=smoke", "regime=accumulate", "regime.subsample=8"), "regime.subsample", 8, "model.batch_size=16"),
    (("debug=smoke", "model=vae", "num_synthetic=8"), "num_synthetic", 8, "at least model.batch_size=16"),
    (("debug=smoke", "model=gmm", "num_synthetic=3"), "num_synthetic", 3, "at least model.n_components=4"),
    (("model=gmm", "model.covariance_type=diag", "model.pca_components=60", "num_synthetic=50"), "num_synthetic", 50,
     "at least model.pca_components=60"),
    (("debug=smoke", "metrics.nearest_k=100"), "metrics.nearest_k", 100, "num_synthetic - 1 = 63"),
    # Metrics
    (("metrics.extractors=[foo]",), "metrics.extractors", ["foo"], "['classifier', 'inception']"),
    (("metrics.extractors=bogus",), "metrics.extractors", "bogus", "'auto' or a non-empty list"),
    (("metrics.nearest_k=0",), "metrics.nearest_k", 0, "≥ 1"),
    (("metrics.class_size=6",), "metrics.class_size", 6, "≥ metrics.nearest_k + 2 = 7"),
    (("metrics.density_fraction=0.6",), "metrics.density_fraction", 0.6, "a fraction in (0, 0.5]"),
    (("dataset.tail_seed=-1",), "dataset.tail_seed", -1, "null (the class index is the rank)"),
    (("metrics.num_samples=3",), "metrics.num_samples", 3, "null (all samples) or an integer in"),
    (("metrics.kid_subsets=0",), "metrics.kid_subsets", 0, "≥ 1"),
    (("metrics.kid_subset_size=1",), "metrics.kid_subset_size", 1, "≥ 2"),
    (("metrics.near_copy_ratio=0",), "metrics.near_copy_ratio", 0.0, "(0, 1]"),
    (("metrics.tail_fraction=1.5",), "metrics.tail_fraction", 1.5, "(0, 1]"),
    (("metrics.lost_threshold=0",), "metrics.lost_threshold", 0.0, "(0, 1]"),
    (("metrics.classifier_epochs=0",), "metrics.classifier_epochs", 0, "≥ 1"),
    (("metrics.inception_source=web",), "metrics.inception_source", "web", "['auto', 'nvlabs', 'fid_helper']"),
    (("metrics.inception_batch_size=0",), "metrics.inception_batch_size", 0, "> 0"),
    # Report, hardware, logging
    (("report.grid_size=0",), "report.grid_size", 0, "> 0"),
    (("report.strip_seeds=0",), "report.strip_seeds", 0, "> 0"),
    (("accelerator.mixed_precision=fp8",), "accelerator.mixed_precision", "fp8", "['auto', 'no', 'fp16', 'bf16']"),
    pytest.param(("accelerator.mixed_precision=fp16",), "accelerator.mixed_precision", "fp16", "fp16 needs one",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed with a GPU")),
    (("logger.kind=mlflow",), "logger.kind", "mlflow", "['none', 'tensorboard', 'wandb']"),
]


@pytest.mark.parametrize(("overrides", "key", "value", "allowed"), BAD)
def test_bad_config_names_key_value_and_what_is_allowed(overrides, key, value, allowed):
    with pytest.raises(ConfigError) as info:
        validate(compose_config(*overrides))
    message = str(info.value)
    assert message.startswith(f"{key}={value!r} is not allowed: "), message
    assert allowed in message, message
    assert info.value.key == key


def test_the_table_is_big_enough():
    assert len(BAD) >= 30


@pytest.mark.parametrize(("overrides", "key"), [
    (("regime.subsample=100",), "subsample"),  # only accumulate subsamples
    (("regime.real_fraction=0.5",), "real_fraction"),  # replace mixes in no real images
    (("regime=accumulate", "regime.real_fraction=0.5"), "real_fraction"),
    (("regime.kind=replace",), "kind"),  # the regime is chosen by its group, regime=NAME
    (("model.sampler=ddim",), "sampler"),  # sampling keys live in the sampling node only
    (("model=vae", "model.temperature=0.5"), "temperature"),
    (("model=gmm", "model.train_steps=5"), "train_steps"),  # another model's key
])
def test_a_key_the_chosen_component_does_not_have_fails_at_composition(overrides, key):
    """Each component's config is its schema: a key that does not apply cannot be set, so a typo'd experiment
    does not run silently."""
    with pytest.raises(Exception, match=f"Could not override '[a-z]+.{key}'") as info:
        compose_config(*overrides)
    assert type(info.value).__name__ == "ConfigCompositionException"


@pytest.mark.parametrize("group", ["model", "regime", "dataset", "experiment"])
def test_an_unknown_choice_lists_the_valid_names(group):
    with pytest.raises(Exception, match=f"Could not find '{group}/nope'") as info:  # Hydra's MissingConfigException
        compose_config(f"{group}=nope")
    options = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
    assert all(f"\t{name}" in str(info.value) for name in options)


# Checks that need the data: (overrides, training pool size, class count or None, key, value, allowed)
BAD_WITH_DATA = [
    (("model.num_classes=10",), 100, None, "model.num_classes", 10, "this dataset has no class labels"),
    (("model.num_classes=5",), 1397, 10, "model.num_classes", 5, "the dataset's class count, 10"),
    (("regime=accumulate", "regime.subsample=5000"), 1397, 10, "regime.subsample", 5000,
     "at most 2797: generation 1 draws from the real pool's 1397 images and num_synthetic=1400"),
    (("model=gmm", "generation=0", "model.n_components=1500"), 1397, 10, "model.n_components", 1500,
     "at most the training pool's 1397 images"),
    (("regime.curation=confidence",), 100, None, "regime.curation", "confidence", "needs labelled data"),
    (("regime.curation=confidence", "metrics.extractors=[inception]"), 1397, 10, "regime.curation", "confidence",
     "'classifier' in metrics.extractors"),
    (("regime.curation=verify",), 100, None, "regime.curation", "verify", "trained on the real pool's class labels"),
    (("model=gmm", "regime.curation=verify"), 1397, 10, "regime.verify_threshold", 0.0,
     "> 0, or regime.keep_fraction < 1, for an unconditional model"),
    (("regime=fresh", "regime.first_real=5000"), 1397, 10, "regime.first_real", 5000, "at most the real pool's 1397"),
    (("regime=fresh", "regime.first_real=100"), 1397, 10, "regime.first_real", 100, "at least model.batch_size=128"),
]


@pytest.mark.parametrize(("overrides", "num_train", "num_classes", "key", "value", "allowed"), BAD_WITH_DATA)
def test_bad_config_for_the_data(overrides, num_train, num_classes, key, value, allowed):
    config = validate(compose_config(*overrides))
    with pytest.raises(ConfigError) as info:
        validate_data(config, num_train, num_classes)
    assert str(info.value).startswith(f"{key}={value!r} is not allowed: ") and allowed in str(info.value)


def test_subsample_may_take_everything_generation_one_has_and_no_more():
    # generation 1 under accumulate draws from the real pool plus one generation's samples: 1,397 + 1,400
    validate_data(validate(compose_config("regime=accumulate", "regime.subsample=2797")), 1397, 10)
    with pytest.raises(ConfigError, match="regime.subsample=2798 is not allowed: null or at most 2797"):
        validate_data(validate(compose_config("regime=accumulate", "regime.subsample=2798")), 1397, 10)


def test_good_configs_pass():
    for overrides in [(), ("debug=smoke",), ("regime=accumulate", "regime.subsample=2000"),
                      ("regime=fresh", "regime.real_fraction=0.3"), ("model.num_classes=10", "sampling.guidance=1")]:
        config = validate(compose_config(*overrides))
        validate_data(config, 1397, 10)


@pytest.mark.slow
def test_conditional_model_on_an_unlabelled_folder_stops_before_any_training(tmp_path, cache_dir):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(ConfigError, match="model.num_classes=10 is not allowed: null: this dataset has no class"):
        run_chain(tmp_path / "run", "debug=smoke", "generation=0", "dataset=folder", f"dataset.path={folder}",
                  "dataset.image_size=8", "dataset.channels=1", "model.num_classes=10")
    assert not list((tmp_path / "run").glob("gen_*")) and not (tmp_path / "run" / "run.json").exists()


@pytest.mark.slow
def test_bad_config_through_the_command_line(tmp_path):
    """A check on the loaded data (tests/test_chain.py runs config-only ones through the command line too)."""
    result = run_cli("debug=smoke", "regime=accumulate", "regime.subsample=5000", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "regime.subsample=5000 is not allowed: null or at most 1461" in output and "Traceback" not in output
    assert not list((tmp_path / "run").glob("gen_*"))
