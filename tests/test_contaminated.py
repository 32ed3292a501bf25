"""The contaminated pool (regime=contaminated): filters that must detect generated images, with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_config, digits, run_chain
from test_regimes import REAL, SYN, chain_sets, ids, make_regime, sources

from imgcollapse.config import validate
from imgcollapse.data import ImageSet
from imgcollapse.detector import Detector, threshold_for
from imgcollapse.errors import ConfigError


def test_no_filter_is_accumulate_image_for_image():
    size = 200
    plain = chain_sets(make_regime("accumulate", subsample=size), 4)
    pooled = chain_sets(make_regime("contaminated", subsample=size), 4)
    for g, ((a, ca), (b, cb)) in enumerate(zip(plain, pooled, strict=True), start=1):
        assert np.array_equal(ids(a), ids(b))
        assert cb["num_real"] == ca["num_real"] and cb["num_flagged"] == 0 and cb["filter_tpr"] == 0
        assert cb["num_pool"] == REAL + g * SYN
        assert cb["pool_synthetic_share"] == pytest.approx(g * SYN / (REAL + g * SYN))  # grows as the web's


def test_oracle_leaves_no_generated_image():
    for data, composition in chain_sets(make_regime("contaminated", filter="oracle", subsample=250), 4):
        assert (sources(data) == 0).all() and len(data) == 250
        assert composition["num_synthetic"] == 0 and composition["num_real"] == 250
        assert composition["filter_tpr"] == 1 and composition["filter_fpr"] == 0


def test_published_fraction_is_drawn_once_per_generation():
    regime = make_regime("contaminated", published_fraction=0.25)
    sets = chain_sets(regime, 3)
    for g, (_, composition) in enumerate(sets, start=1):
        assert composition["num_synthetic"] == g * SYN // 4 and composition["num_real"] == REAL
    # generation 0's published quarter is the same images in every later pool
    first = [set(ids(data)[sources(data) == 1]) for data, _ in sets]
    assert first[0] == first[1] == first[2] and len(first[0]) == SYN // 4


def test_the_filter_and_its_keys_are_checked():
    def check(*overrides: str) -> None:
        validate(compose_config("model=gmm", "regime=contaminated", *overrides))

    check()
    with pytest.raises(ConfigError, match=r"regime.filter.*watermark.*\['none', 'oracle', 'detector'\]"):
        check("regime.filter=watermark")
    with pytest.raises(ConfigError, match="regime.published_fraction"):
        check("regime.published_fraction=0")
    with pytest.raises(ConfigError, match="regime.detector_fpr"):
        check("regime.detector_fpr=1.0")


def test_threshold_for_flags_at_most_the_target_share():
    scores = np.arange(100, dtype=float)
    assert threshold_for(scores, 0.05) == 94  # flags 95..99: exactly 5
    assert threshold_for(scores, 0.0) == 99  # flags nothing
    assert ((scores > threshold_for(scores, 0.123)).mean()) == pytest.approx(0.12)


def detector_sets(fake) -> tuple:
    """A contaminated regime with filter=detector set up on the digits, and the pool's real images and two
    generations of `fake(images, seed)` standing in for samples."""
    splits = digits()
    regime = make_regime("contaminated", filter="detector", subsample=None, detector_seed=0, detector_epochs=20)
    regime.setup(splits.train, splits.heldout, cache_dir=None, conditional=False, floor=splits.floor)
    real = splits.train
    synthetic = [fake(real.subset(np.arange(g * 500, g * 500 + 500)), g) for g in range(2)]
    return regime, real, synthetic


def noisy(images: ImageSet, seed: int) -> ImageSet:
    """An easy fake: digits under strong pixel noise."""
    g = torch.Generator().manual_seed(seed)
    x = images.images.float() + 60 * torch.randn(images.images.shape, generator=g)
    return ImageSet(x.clamp(0, 255).to(torch.uint8), images.labels, images.class_names)


def faithful(images: ImageSet, seed: int) -> ImageSet:
    """A perfect generator: real digits themselves (held out of nothing), which no detector can tell apart."""
    return images


@pytest.mark.slow
def test_a_detector_finds_an_easy_fake_and_not_a_faithful_one():
    regime, real, synthetic = detector_sets(noisy)
    _, row = regime.training_set(real, synthetic, 2, seed=0)
    assert row["detector_calibration_fpr"] <= 0.05
    assert row["detector_tpr_unseen"] > 0.9 and row["filter_tpr"] > 0.9
    assert row["detector_fpr_unseen"] < 0.15 and row["filter_fpr"] < 0.15  # the 5% target, on other real images
    assert row["num_synthetic"] < 0.1 * 1000
    # a faithful generator's samples are real images: the detector can only guess, at about its false-positive rate
    regime, real, synthetic = detector_sets(faithful)
    _, row = regime.training_set(real, synthetic, 2, seed=0)
    assert row["detector_tpr_unseen"] < 0.25 and row["filter_tpr"] < 0.25


def test_a_detector_that_flags_nothing_is_the_unfiltered_pool(monkeypatch):
    regime, real, synthetic = detector_sets(noisy)
    monkeypatch.setattr(Detector, "flags", lambda self, images: np.zeros(len(images), dtype=bool))
    data, row = regime.training_set(real, synthetic, 2, seed=0)
    unfiltered, plain = make_regime("contaminated").training_set(real, synthetic, 2, seed=0)
    assert torch.equal(data.images, unfiltered.images) and row["num_synthetic"] == plain["num_synthetic"] == 1000
    assert row["filter_tpr"] == 0 and row["num_flagged"] == 0


@pytest.mark.slow
def test_an_oracle_chain_trains_on_real_images_only(tmp_path):
    rows = run_chain(tmp_path / "run", "debug=smoke", "model=gmm", "generation=2", "regime=contaminated",
                     "regime.filter=oracle", "regime.subsample=600")
    assert [r["num_synthetic"] for r in rows] == [0, 0, 0]
    assert [r["num_real"] for r in rows[1:]] == [600, 600]
    assert rows[2]["pool_synthetic_share"] > rows[1]["pool_synthetic_share"] > 0
