"""Verification as Feng et al. mean it: an independent verifier, never the metrics' ruler."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import conf, run_chain
from conftest import digits as load_digits
from scipy.stats import spearmanr

from imgcollapse.config import build
from imgcollapse.data import ImageSet
from imgcollapse.errors import UserError
from imgcollapse.metrics.features import ClassifierNet, load_or_train_classifier
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
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    data = candidates([0, 0, 1, 1, 0])  # verifier labels 0, 1, 0, 1, 0: candidates 0, 3, 4 agree
    kept, stats = regime_with(probs, conditional=True).curate(data, None, 2)
    assert kept.images.flatten().tolist() == [0, 3]  # the first n accepted, in order
    assert stats["num_verified"] == 3 and stats["verifier_agreement"] == pytest.approx(0.6)
    kept, stats = regime_with(probs, conditional=True, verify_threshold=0.6).curate(data, None, 5)
    assert kept.images.flatten().tolist() == [0, 3]  # candidate 4 agrees but at 0.55 < 0.6
    kept, _ = regime_with(probs, conditional=False, verify_threshold=0.75).curate(data, None, 5)
    assert kept.images.flatten().tolist() == [0, 1]  # unconditional: confidence alone
    with pytest.raises(UserError, match="regime.verify_threshold"):
        regime_with(probs, conditional=False, verify_threshold=0.95).curate(data, None, 5)


def test_reward_is_the_old_confidence_curation():
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=50)
    data = candidates(list(range(10)) * 5)
    old, _ = build(conf("regime", "replace", curation="confidence", keep_fraction=0.5)).curate(data, probs, 20)
    new, _ = build(conf("regime", "replace", curation="reward", keep_fraction=0.5)).curate(data, probs, 20)
    assert torch.equal(old.images, new.images)


def test_the_verifier_is_not_the_metrics_classifier(tmp_path):
    splits = load_digits()
    verifier = load_or_train_verifier(splits.train, splits.heldout, tmp_path, epochs=3, seed=1)
    classifier = load_or_train_classifier(splits.train, splits.heldout, tmp_path, epochs=3, seed=1)
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
    again = load_or_train_verifier(splits.train, splits.heldout, tmp_path, epochs=3, seed=1)  # from its cache
    images = splits.heldout.images[:20]
    np.testing.assert_array_equal(again(images), verifier(images))
    other = load_or_train_verifier(splits.train, splits.heldout, tmp_path, epochs=3, seed=2)
    assert other.fingerprint != verifier.fingerprint  # its seed is its own


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
    kept = ImageSet.load(tmp_path / "gen_001" / "samples.npz")
    assert len(kept) == min(64, rows[1]["num_verified"])
