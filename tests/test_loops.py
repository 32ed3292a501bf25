"""Every loop of the literature through the real chain: models, regimes, curation, conditioning, presets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, compose_config, digits, run_chain
from hydra.utils import get_object

from imgcollapse.chain import condition_labels, draw_labels, generation_seeds, strip_seed
from imgcollapse.config import ConfigError
from imgcollapse.data import ImageSet
from imgcollapse.metrics import without
from imgcollapse.metrics.features import load_or_train_classifier
from imgcollapse.models.gmm import GMM
from imgcollapse.models.vae import VAE

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

SMOKE = ("debug=smoke", "report.draw=false")  # the figures are tested in test_report.py
REAL = 1397  # the digits' training pool
EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("*.yaml"))


def samples(run_dir: Path, generation: int) -> ImageSet:
    return ImageSet.load(run_dir / f"gen_{generation:03d}" / "samples.npz")


@pytest.mark.parametrize(("model", "cls"), [("vae", VAE), ("gmm", GMM)])
def test_vae_and_gmm_run_the_chain(tmp_path, model, cls):
    rows = run_chain(tmp_path, *SMOKE, f"model={model}", "generation=1")
    assert [r["generation"] for r in rows] == [0, 1]
    for r in rows:
        assert np.isfinite(r["fid"]) and np.isfinite(r["train_loss"])
    out = samples(tmp_path, 1)
    assert out.images.shape == (64, 1, 8, 8) and out.labels is not None  # predicted labels flow on
    # each generation's model/ loads back and makes the collapse strip it left behind
    loaded = cls.load(tmp_path / "gen_001" / "model")
    strip = ImageSet.load(tmp_path / "gen_001" / "strip.npz")
    assert torch.equal(loaded.sample(len(strip), seed=strip_seed(0)).images, strip.images)


@pytest.mark.parametrize(
    ("regime", "expected"),
    [
        ("replace", [{"num_real": 0, "num_synthetic": 64}, {"num_real": 0, "num_synthetic": 64}]),
        ("accumulate", [{"num_real": REAL, "num_synthetic": 64, "share_gen_000": 64 / (REAL + 64)},
                        {"num_real": REAL, "num_synthetic": 128, "share_gen_000": 64 / (REAL + 128),
                         "share_gen_001": 64 / (REAL + 128)}]),
        ("fresh", [{"num_real": 32, "num_synthetic": 32, "num_real_reused": 32},
                   {"num_real": 32, "num_synthetic": 32, "num_real_reused": 32}]),
        ("augment", [{"num_real": 32, "num_synthetic": 32}, {"num_real": 32, "num_synthetic": 32}]),
        ("real_plus", [{"num_real": REAL, "num_synthetic": 56}, {"num_real": REAL, "num_synthetic": 56}]),
    ],
)
def test_rows_record_the_training_set_composition(tmp_path, regime, expected):
    extra = ("regime.synthetic_ratio=0.04",) if regime == "real_plus" else ()  # round(0.04 x 1,397) = 56 of 64
    rows = run_chain(tmp_path, *SMOKE, "model=gmm", f"regime={regime}", *extra)
    assert rows[0]["num_real"] == REAL and rows[0]["num_synthetic"] == 0 and rows[0]["num_train"] == REAL
    for row, want in zip(rows[1:], expected, strict=True):
        got = {k: v for k, v in row.items() if k.startswith(("num_real", "num_synthetic", "share_gen_"))}
        assert got == pytest.approx(want)
        assert row["num_train"] == want["num_real"] + want["num_synthetic"]


def test_fresh_chain_records_reuse_and_first_real(tmp_path):
    rows = run_chain(tmp_path, *SMOKE, "model=gmm", "regime=fresh", "regime.first_real=1350")
    assert rows[0]["num_train"] == 1350 and rows[0]["num_real_reused"] == 0
    assert [r["num_real_reused"] for r in rows[1:]] == [0, 17]  # 47 left fresh: 32 for gen 1, 15 + 17 for gen 2


def test_curation_keeps_the_verifiers_top_candidates(tmp_path, cache_dir):
    rows = run_chain(tmp_path, *SMOKE, "model=gmm", "regime.curation=confidence", "regime.keep_fraction=0.4",
                     "generation=1")
    row = rows[1]
    assert row["num_candidates"] == math.ceil(64 / 0.4) == 160
    kept = samples(tmp_path, 1)
    assert len(kept) == 64  # what the next generation trains on
    assert rows[1]["num_train"] == 64  # generation 1 trained on generation 0's 64 kept samples

    # Rebuild generation 1's candidates from its saved model and score them with the same classifier.
    splits = digits()
    # the metrics classifier trains on the pool less the real floor's images (docs/METRICS.md)
    classifier = load_or_train_classifier(without(splits.train, splits.floor), splits.heldout, cache_dir, epochs=2,
                                          seed=0)
    candidates = GMM.load(tmp_path / "gen_001" / "model").sample(160, seed=generation_seeds(0, 1)["sample"])
    confidence = classifier(candidates.images)[1].max(axis=1)
    top = np.sort(np.argsort(-confidence, kind="stable")[:64])
    assert torch.equal(kept.images, candidates.images[top])
    # metrics describe the raw candidates, not the curated set
    assert row["confidence"] == pytest.approx(confidence.mean())
    assert row["curation_threshold"] == pytest.approx(confidence[top].min())
    assert row["curated_score"] > row["candidate_score"] == pytest.approx(confidence.mean())


def test_conditional_ddpm_labels_are_its_conditions(tmp_path):
    rows = run_chain(tmp_path, *SMOKE, "model.num_classes=10", "sampling.guidance=1.0", "regime=accumulate",
                     "generation=1")
    assert len(rows) == 2
    real = digits().train
    for g in range(2):  # conditions drawn with the real class frequencies, and they stay the labels
        assert torch.equal(samples(tmp_path, g).labels, draw_labels(real.labels, 64, generation_seeds(0, g)["labels"]))
    strip = ImageSet.load(tmp_path / "gen_001" / "strip.npz")
    assert strip.labels.tolist() == [0, 1, 2, 3]


def test_condition_labels_follow_the_configured_frequencies():
    real = digits().train
    skewed = ImageSet(real.images[:100], torch.full((100,), 3), real.class_names)
    uniform = condition_labels("uniform", real, skewed, 5000, seed=0)
    assert np.abs(np.bincount(uniform.numpy(), minlength=10) / 5000 - 0.1).max() < 0.02
    assert (condition_labels("train", real, skewed, 50, seed=0) == 3).all()
    from_real = condition_labels("real", real, skewed, 20000, seed=0).numpy()
    np.testing.assert_allclose(np.bincount(from_real, minlength=10) / 20000,
                               np.bincount(real.labels.numpy(), minlength=10) / len(real), atol=0.01)


def test_num_classes_must_match_the_dataset_before_training(tmp_path):
    with pytest.raises(ConfigError, match="model.num_classes"):
        run_chain(tmp_path, *SMOKE, "model.num_classes=5")
    assert not list(tmp_path.glob("gen_*"))


def test_subsample_too_large_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="regime.subsample"):
        run_chain(tmp_path, *SMOKE, "model=gmm", "regime=accumulate", f"regime.subsample={REAL + 65}")
    assert not list(tmp_path.glob("gen_*"))


# One preset chain per (model, regime) pair no other test runs: ddpm/augment, ddpm/fresh, vae/accumulate,
# vae/augment, vae/contaminated (its learned detector too). Every preset composes, validates and builds in
# tests/test_configs.py; ddpm/replace (the shared smoke chain), vae/replace, conditional ddpm and the GMM under every
# regime run in this file and test_faults.py.
PRESET_RUNS = ["mad_augment", "mad_fresh", "gerstgrasser_accumulate", "shumailov_real10", "bertrand_real_fraction",
               "contaminated_pool"]
REGIME_CLASSES = ("Replace", "Accumulate", "Fresh", "Augment", "RealPlus")
# smoke makes 64 samples a generation: real_plus can take 0.04 x 1,397 = 56 of them
PRESET_SMOKE = {"bertrand_real_fraction": ("regime.synthetic_ratio=0.04",)}


def test_preset_runs_cover_every_uncovered_pair():
    pairs = {}
    for experiment in EXPERIMENTS:
        config = compose_config(f"experiment={experiment}")
        pairs.setdefault((config.model._target_, config.regime._target_), []).append(experiment)
    run = {pair for pair, names in pairs.items() if set(names) & set(PRESET_RUNS)}
    elsewhere = {("imgcollapse.models.ddpm.DDPM", "imgcollapse.regimes.Replace"),
                 ("imgcollapse.models.vae.VAE", "imgcollapse.regimes.Replace")}
    # the GMM under every regime: test_rows_record_the_training_set_composition below
    elsewhere |= {("imgcollapse.models.gmm.GMM", f"imgcollapse.regimes.{r}") for r in REGIME_CLASSES}
    assert set(pairs) <= run | elsewhere, set(pairs) - run - elsewhere


@pytest.mark.parametrize("experiment", PRESET_RUNS)
def test_every_preset_runs_under_smoke(tmp_path, experiment):
    extra = PRESET_SMOKE.get(experiment, ())
    config = compose_config(f"experiment={experiment}", *SMOKE, *extra)
    rows = run_chain(tmp_path, f"experiment={experiment}", *SMOKE, *extra, "generation=1")
    assert [r["generation"] for r in rows] == [0, 1]
    kind = get_object(config.regime._target_).kind
    expected_real = {"replace": 0, "accumulate": REAL, "fresh": 32, "augment": 32, "real_plus": REAL,
                     "contaminated": REAL}[kind]
    if kind in ("fresh", "augment"):
        expected_real = round(config.regime.real_fraction * 64)
    if config.regime.get("subsample") is None:
        assert rows[1]["num_real"] == expected_real
    if kind == "contaminated":  # the pool, and the filter's rates against the provenance the kit knows
        assert rows[1]["pool_synthetic_share"] == pytest.approx(64 / (REAL + 64))
        assert 0 <= rows[1]["filter_tpr"] <= 1 and rows[1]["detector_calibration_fpr"] <= 0.05
    assert len(samples(tmp_path, 1)) == 64
