"""Verification as Feng et al. mean it: an independent verifier, never the metrics' ruler."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, conf, run_chain
from conftest import digits as load_digits
from scipy.stats import spearmanr

import imgcollapse.metrics.evaluation as evaluation
import imgcollapse.regimes as regimes
from imgcollapse.config import build, validate
from imgcollapse.data import ImageSet
from imgcollapse.data.transforms import class_counts
from imgcollapse.errors import UserError
from imgcollapse.metrics import setup_metrics
from imgcollapse.metrics.evaluation import without
from imgcollapse.metrics.features import ClassifierNet, image_keys, load_or_train_classifier
from imgcollapse.verifier import Verifier, VerifierNet, load_or_train_verifier

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

PACKAGE = Path(__file__).resolve().parents[1] / "imgcollapse"
SMOKE = ("debug=smoke", "threads=1", "report.draw=false")


class Fixed:
    """A stand-in verifier returning fixed probabilities (what curation does with them is under test)."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.probs[: len(images)]


def regime_with(probs: np.ndarray, conditional: bool, **values):
    regime = build(conf("regime", "replace", curation="verify", keep_fraction=0.5, **values))
    regime.verifier, regime.conditional = Fixed(probs), conditional
    return regime


def candidates(labels: list[int]) -> ImageSet:
    n = len(labels)
    return ImageSet(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), torch.tensor(labels))


def test_verify_keeps_samples_whose_verifier_label_is_the_requested_class():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    data = candidates([0, 0, 1, 1, 0])  # verifier labels 0, 1, 0, 1, 0: candidates 0, 3, 4 agree
    kept, stats = regime_with(probs, conditional=True).curate(data, None, 2)
    assert kept.images.flatten().tolist() == [0, 4]  # the top n accepted (0.9, 0.8), in order; not the first n
    assert stats["num_verified"] == 3 and stats["verifier_agreement"] == pytest.approx(0.6)
    kept, stats = regime_with(probs, conditional=True, verify_threshold=0.75).curate(data, None, 5)
    assert kept.images.flatten().tolist() == [0, 4]  # candidate 3 agrees but at 0.7 < 0.75
    kept, _ = regime_with(probs, conditional=False, verify_threshold=0.75).curate(data, None, 5)
    assert kept.images.flatten().tolist() == [0, 1, 4]  # unconditional: confidence alone
    with pytest.raises(UserError, match="regime.verify_threshold"):
        regime_with(probs, conditional=False, verify_threshold=0.95).curate(data, None, 5)


def test_reward_is_the_old_confidence_curation():
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=50)
    data = candidates(list(range(10)) * 5)
    old, _ = build(conf("regime", "replace", curation="confidence", keep_fraction=0.5)).curate(data, probs, 20)
    new, _ = build(conf("regime", "replace", curation="reward", keep_fraction=0.5)).curate(data, probs, 20)
    assert torch.equal(old.images, new.images)


def test_the_verifier_is_not_the_metrics_classifier(tmp_path):
    splits = load_digits()  # each on its own real images: the verifier on the floor split, the ruler on the rest
    verifier = load_or_train_verifier(splits.floor, splits.heldout, tmp_path, epochs=10, seed=1)
    classifier = load_or_train_classifier(without(splits.train, splits.floor), splits.heldout, tmp_path, epochs=3,
                                          seed=1)
    assert isinstance(verifier.net, VerifierNet) and isinstance(classifier.net, ClassifierNet)
    assert verifier.fingerprint != classifier.fingerprint
    # independent judges disagree somewhere: on heavily noised digits their labels are not the same function
    noisy = (splits.heldout.images.float() + 60 * torch.randn(splits.heldout.images.shape,
                                                              generator=torch.Generator().manual_seed(0)))
    noisy = noisy.clamp(0, 255).to(torch.uint8)
    probs_v, probs_c = np.asarray(verifier(noisy)), classifier(noisy)[1]
    assert (probs_v.argmax(1) != probs_c.argmax(1)).mean() > 0.02  # a copy of the ruler would agree everywhere
    assert spearmanr(probs_v.max(1), probs_c.max(1)).statistic < 0.95  # nor rank confidence the same way
    assert verifier.accuracy > 0.8
    again = load_or_train_verifier(splits.floor, splits.heldout, tmp_path, epochs=10, seed=1)  # from its cache
    images = splits.heldout.images[:20]
    np.testing.assert_array_equal(again(images), verifier(images))
    other = load_or_train_verifier(splits.floor, splits.heldout, tmp_path, epochs=10, seed=2)
    assert other.fingerprint != verifier.fingerprint  # its seed is its own


@pytest.mark.parametrize("long_tail", [0.0, 1.0])
def test_the_verifier_trains_on_real_images_the_ruler_never_trains_on(tmp_path, monkeypatch, long_tail):
    """Cross-fitted: the sets the two judges are actually handed (captured as the kit trains them) share no image;
    the verifier's is the floor split, class-stratified, the held-out split's size, whatever the arm's long tail."""
    taught: dict[str, ImageSet] = {}

    def capture(name, train_fn):
        def wrapped(train, *args, **kwargs):
            taught[name] = train
            return train_fn(train, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(evaluation, "load_or_train_classifier", capture("ruler", evaluation.load_or_train_classifier))
    monkeypatch.setattr(regimes, "load_or_train_verifier", capture("verifier", regimes.load_or_train_verifier))
    splits = load_digits(long_tail=long_tail)
    setup_metrics(splits, tmp_path, conf("metrics", extractors=["classifier"], classifier_epochs=1), seed=0,
                  num_scored=100)
    regime = build(conf("regime", "replace", curation="verify", keep_fraction=0.5, verifier_epochs=1),
                   num_synthetic=10)
    regime.setup(splits.train, splits.heldout, tmp_path, conditional=True, floor=splits.floor)
    ruler, verifier = (set(image_keys(taught[k].images)) for k in ("ruler", "verifier"))
    assert ruler and verifier and not ruler & verifier
    assert verifier == set(image_keys(splits.floor.images)) and len(taught["verifier"]) == len(splits.heldout)
    balanced = load_digits()  # the pool the floor is drawn from, before any long tail
    assert verifier == set(image_keys(balanced.floor.images))  # one verifier per seed for every arm
    shares = np.array(class_counts(balanced.train)) / len(balanced.train)
    assert np.abs(np.array(class_counts(taught["verifier"])) - shares * len(splits.heldout)).max() <= 1


def test_each_chain_seed_trains_its_own_verifier(tmp_path):
    """regime.verifier_seed follows the chain's seed (conf: ${seed}) in every regime; a fixed integer still works.
    Two seeds, two verifiers; the same seed, the same one."""
    for kind in ("replace", "accumulate", "fresh", "augment", "real_plus"):
        assert validate(compose_config(f"regime={kind}", "seed=5")).regime.verifier_seed == 5
    splits = load_digits()

    def verifier_of(*overrides: str) -> tuple[int, Verifier]:
        config = validate(compose_config("regime.curation=verify", "regime.verifier_epochs=2", *overrides))
        regime = build(config.regime, num_synthetic=10)
        regime.setup(splits.train, splits.heldout, tmp_path, conditional=False, floor=splits.floor)
        return config.regime.verifier_seed, regime.verifier

    (s1, v1), (s2, v2), (again, v1b), (fixed, v7) = (verifier_of("seed=1"), verifier_of("seed=2"),
                                                      verifier_of("seed=1"), verifier_of("seed=2",
                                                                                         "regime.verifier_seed=7"))
    assert (s1, s2, again, fixed) == (1, 2, 1, 7)
    assert len({v1.fingerprint, v2.fingerprint, v7.fingerprint}) == 3 and v1b.fingerprint == v1.fingerprint
    images = splits.heldout.images[:50]
    assert not np.allclose(v1(images), v2(images))
    np.testing.assert_array_equal(v1b(images), v1(images))


def test_no_metrics_module_imports_the_verifier():
    for path in (PACKAGE / "metrics").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any("verifier" in n for n in names), path


def test_a_verified_chain_calls_the_verifier_only_to_curate(tmp_path, monkeypatch):
    calls = []
    original = Verifier.__call__

    def counted(self, images, batch_size=512):
        calls.append(len(images))
        return original(self, images, batch_size)

    monkeypatch.setattr(Verifier, "__call__", counted)
    rows = run_chain(tmp_path, *SMOKE, "model.num_classes=10", "regime.curation=verify", "regime.keep_fraction=0.5",
                     "regime.verifier_epochs=3")
    # its held-out accuracy once when trained, then twice per generation: on the candidates and on the null draws'
    # candidates (memorization's null is curated as the samples are); never by the scoring
    assert calls == [400] + [128, 128] * 3
    for row in rows:
        assert row["num_candidates"] == 128 and 0 <= row["verifier_agreement"] <= 1
        assert row["num_verified"] >= 0
        # how far the verifier ranks the candidates as the ruler does: recorded every curated generation
        assert row["verifier_ruler_spearman"] is None or -1 <= row["verifier_ruler_spearman"] <= 1
    kept = ImageSet.load(tmp_path / "gen_001" / "samples.npz")
    assert len(kept) == min(64, rows[1]["num_verified"])
