"""The contaminated pool (regime=contaminated): filters that must detect generated images, with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_config, digits, run_chain
from test_regimes import REAL, SYN, chain_sets, ids, make_regime, sources

from imgcollapse import watermark
from imgcollapse.config import validate
from imgcollapse.data import ImageSet
from imgcollapse.detector import Detector, threshold_for
from imgcollapse.errors import ConfigError
from imgcollapse.resume import config_differences


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
    check("regime.filter=watermark")
    with pytest.raises(ConfigError, match=r"regime.filter.*stamp.*\['none', 'oracle', 'detector', 'watermark'\]"):
        check("regime.filter=stamp")
    with pytest.raises(ConfigError, match="regime.watermark_strength"):
        check("regime.filter=watermark", "regime.watermark_strength=0")
    with pytest.raises(ConfigError, match="regime.watermark_block"):
        check("regime.filter=watermark", "regime.watermark_block=0")
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


def test_a_watermark_key_is_signs_on_tiles_drawn_by_its_seed():
    k = watermark.key((1, 8, 8), seed=3, block=2)
    assert set(k.unique().tolist()) == {-1.0, 1.0} and k.shape == (1, 8, 8)
    assert torch.equal(k[:, ::2, ::2], k[:, 1::2, 1::2])  # constant on 2x2 tiles
    assert torch.equal(k, watermark.key((1, 8, 8), seed=3, block=2))
    assert not torch.equal(k, watermark.key((1, 8, 8), seed=4, block=2))


def test_a_watermark_is_found_in_marked_images_and_not_in_real_ones():
    splits = digits()
    k = watermark.key((1, 8, 8), seed=0, block=1)
    threshold, calibration_fpr = watermark.calibrate(splits.floor.images, k, 0.05)
    assert calibration_fpr <= 0.05
    real = watermark.scores(splits.heldout.images, k) > threshold
    assert real.mean() < 0.12  # other real images: about the 5% target
    found = [(watermark.scores(watermark.embed(splits.heldout.images, k, s), k) > threshold).mean() for s in
             (2, 24, 96)]
    assert found[0] < 0.2 < 0.7 < found[1] < found[2] and found[2] > 0.99  # deeper marks are found more often
    assert watermark.scores(torch.full((1, 1, 8, 8), 7, dtype=torch.uint8), k)[0] == 0  # a flat image: no evidence
    r = watermark.robustness(splits.heldout.images, k, 24, threshold)
    assert r["watermark_tpr_float"] >= found[1] - 0.05 and r["watermark_tpr_resized"] < r["watermark_tpr_float"]
    exact = 10 * np.log10(255**2 / 24**2)  # every pixel moved by exactly 24 where nothing clips
    grey = torch.full((4, 1, 8, 8), 128, dtype=torch.uint8)
    assert watermark.robustness(grey, k, 24, threshold)["watermark_psnr"] == pytest.approx(exact, abs=1e-9)
    assert exact < r["watermark_psnr"] < exact + 3  # the digits' black and white pixels clip half the mark


def watermark_sets(strength: float) -> tuple:
    """A contaminated regime with filter=watermark set up on the digits; samples stand in as held-out real digits,
    so the mark is the only thing that tells them apart."""
    splits = digits()
    regime = make_regime("contaminated", filter="watermark", subsample=None, watermark_seed=0,
                         watermark_strength=strength)
    regime.setup(splits.train, splits.heldout, cache_dir=None, conditional=False, floor=splits.floor)
    synthetic = [splits.heldout.subset(np.arange(g * 200, g * 200 + 200)) for g in range(2)]
    return regime, splits.train, synthetic


def test_a_watermark_filter_removes_marked_samples_and_records_its_rates():
    regime, real, synthetic = watermark_sets(64)
    _, row = regime.training_set(real, synthetic, 2, seed=0)
    assert row["filter_tpr"] > 0.98 and row["num_synthetic"] < 8  # of 400 marked samples
    assert row["watermark_calibration_fpr"] <= 0.05 and row["watermark_fpr_unseen"] < 0.12
    assert row["filter_fpr"] < 0.12 and row["num_real"] > 0.85 * len(real)
    assert 0 <= row["watermark_tpr_resized"] <= 1 and row["watermark_tpr_reloaded"] > 0.9
    # a mark too faint to find leaves the pool about as it is: the only samples removed are false positives
    regime, real, synthetic = watermark_sets(1)
    _, row = regime.training_set(real, synthetic, 2, seed=0)
    assert row["filter_tpr"] < 0.15


def test_a_chain_resumes_across_the_watermark_keys_unless_it_uses_them():
    base = {"regime": {"filter": "detector", "watermark_strength": 24, "watermark_seed": 0}}
    other = {"regime": {"filter": "detector", "watermark_strength": 8, "watermark_seed": 5}}
    assert config_differences(base, other) == {}
    marked = {"regime": {**base["regime"], "filter": "watermark"}}
    assert set(config_differences(marked, {"regime": {**other["regime"], "filter": "watermark"}})) == {
        "regime.watermark_strength", "regime.watermark_seed"}
