"""Memorization with the right null, in a real chain: two tiny models written here, one that copies its training
images and one that samples a continuous distribution refitted (and shrunk) each generation. The copier must score
as a copier at every generation and the refitter as novel at every generation, whatever the contraction does."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import conf
from conftest import digits as digits_splits

from imgcollapse import chain
from imgcollapse.config import build
from imgcollapse.data import ImageSet
from imgcollapse.metrics import evaluate, setup_metrics
from imgcollapse.store import NULL_FILE, RunStore

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

GENERATIONS = 3  # generations 0..3: the null of generations 1-3 is the previous model's extra draws
NUM_SYNTHETIC = 300
METRICS = conf("metrics", extractors=["classifier"], classifier_epochs=5, bootstrap=10)


class Copier:
    """Returns exact copies of its training images, drawn with replacement."""

    num_classes = None

    def fit(self, data: ImageSet, seed: int) -> dict[str, float]:
        self.images = data.images.clone()
        return {"train_loss": 0.0}

    def sample(self, n: int, seed: int, labels: torch.Tensor | None = None) -> ImageSet:
        index = np.random.default_rng(seed).integers(0, len(self.images), n)
        return ImageSet(self.images[torch.from_numpy(index)])

    def save(self, path: Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.images, Path(path) / "images.pt")


class ShrinkingGaussian(Copier):
    """A Gaussian fitted to its training pixels, sampled with its spread shrunk by `shrink` every generation: a
    contracting, copy-free model."""

    shrink = 0.8

    def fit(self, data: ImageSet, seed: int) -> dict[str, float]:
        x = data.images.reshape(len(data), -1).double()
        self.shape, self.mean = data.images.shape[1:], x.mean(0)
        cov = torch.cov(x.T) + 1e-3 * torch.eye(x.shape[1], dtype=torch.float64)
        self.factor = torch.linalg.cholesky(cov)
        self.images = data.images
        return {"train_loss": 0.0}

    def sample(self, n: int, seed: int, labels: torch.Tensor | None = None) -> ImageSet:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((n, len(self.mean)), generator=g, dtype=torch.float64)
        x = self.mean + self.shrink * z @ self.factor.T
        return ImageSet(x.round().clamp(0, 255).to(torch.uint8).reshape(n, *self.shape))


@pytest.fixture(scope="module")
def setup(cache_dir):
    splits = digits_splits()
    return splits, setup_metrics(splits, cache_dir, METRICS, seed=0, num_scored=NUM_SYNTHETIC)


def run_chain(model: type, root: Path, splits, metrics) -> list[dict]:
    regime = build(conf("regime", "replace"), num_synthetic=NUM_SYNTHETIC)
    return chain.run(store=RunStore(root), splits=splits, make_model=model, regime=regime,
                     score=functools.partial(evaluate, metrics=metrics), predict=metrics.predict,
                     num_null=len(splits.heldout), generation=GENERATIONS, seed=0,
                     grid_size=16, strip_seeds=2)


def test_a_copying_model_scores_as_copying_at_every_generation(setup, tmp_path):
    rows = run_chain(Copier, tmp_path, *setup)
    assert [r["generation"] for r in rows] == list(range(GENERATIONS + 1))
    for row in rows:
        for suffix in ("", "_pixel"):
            assert row[f"near_copy_share{suffix}"] >= 0.9, (row["generation"], suffix)
    for suffix in ("", "_pixel"):
        assert rows[0][f"memorization_ratio{suffix}"] < 0.1  # against unseen real images: plainly copies
        assert rows[0][f"null_near_copy_share{suffix}"] < 0.05
        for row in rows[1:]:
            ratio = row[f"memorization_ratio{suffix}"]
            assert ratio is None or ratio < 0.1  # none: over half the null are copies too (no scale to divide by)
            # a copier's own fresh draws are copies of what its successor trains on, more so as its support shrinks
            assert row[f"null_near_copy_share{suffix}"] > 0.1
    assert all((tmp_path / f"gen_{g:03d}" / NULL_FILE).exists() for g in range(GENERATIONS + 1))


def test_a_shrinking_continuous_model_does_not_score_as_copying(setup, tmp_path):
    rows = run_chain(ShrinkingGaussian, tmp_path, *setup)
    for row in rows:
        for suffix in ("", "_pixel"):
            assert row[f"near_copy_share{suffix}"] <= 0.1, (row["generation"], suffix)
    for row in rows[1:]:  # against a null from the same (contracting) distribution: about as novel as a fresh draw
        assert row["memorization_ratio_pixel"] > 0.6, row["generation"]
    # the samples really do contract generation after generation: what confounded the 0.2 kit's real-scaled ratio
    distances = [row["train_distance_pixel"] for row in rows]
    assert distances[-1] < 0.75 * distances[1]


def test_null_set_follows_the_training_sets_sources():
    real = ImageSet(torch.zeros((100, 1, 2, 2), dtype=torch.uint8))
    nulls = [ImageSet(torch.full((50, 1, 2, 2), g + 1, dtype=torch.uint8)) for g in range(3)]
    composition = {"num_real": 300, "num_synthetic": 300, "share_gen_000": 0.25, "share_gen_002": 0.25}
    null = chain.null_set(3, composition, real, nulls, 80, seed=0)
    values = null.images[:, 0, 0, 0].tolist()
    assert values.count(0) == 40 and values.count(1) == 20 and values.count(3) == 20 and 2 not in values
    replace = chain.null_set(2, {"num_real": 0, "num_synthetic": 300}, real, nulls, 40, seed=0)
    assert set(replace.images[:, 0, 0, 0].tolist()) == {2} and len(replace) == 40  # the last generation's draws
    assert chain.null_set(0, {}, real, nulls, 40, seed=0) is real  # generation 0: held-out real images
    # a source too small for its share shrinks the whole null, so its proportions hold: 50 null draws can be half of
    # 100, not of 400
    capped = chain.null_set(2, {"num_real": 300, "num_synthetic": 300}, real, nulls, 400, seed=0)
    assert capped.images[:, 0, 0, 0].tolist().count(0) == capped.images[:, 0, 0, 0].tolist().count(2) == 50
    assert chain.null_set(2, {"num_real": 0, "num_synthetic": 300}, real, [None, None], 40, seed=0) is None
