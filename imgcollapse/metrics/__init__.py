"""Metrics front door: a `Reference` built once per (dataset, extractor), and `evaluate(samples, ...)`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcollapse.data import ImageSet
from imgcollapse.metrics.features import Classifier
from imgcollapse.metrics.scores import confidence, fid, mean_cov
from imgcollapse.store import atomic_write

log = logging.getLogger(__name__)


@dataclass
class Reference:
    """Held-out real features and their statistics: computed once, cached as a self-describing file."""

    features: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    probs: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray, probs: np.ndarray) -> Reference:
        mu, sigma = mean_cov(features)
        return cls(features, mu, sigma, probs)


def load_or_build_reference(heldout: ImageSet, classifier: Classifier, cache_dir: Path) -> Reference:
    """Reference statistics of the held-out split under `classifier`, cached by both fingerprints."""
    path = Path(cache_dir) / "reference" / f"classifier-{classifier.fingerprint}-{heldout.fingerprint()}.npz"
    if path.exists():
        with np.load(path) as z:
            return Reference(z["features"], z["mu"], z["sigma"], z["probs"])
    features, probs = classifier(heldout.images)
    ref = Reference.from_features(features, probs)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, features=ref.features, mu=ref.mu, sigma=ref.sigma, probs=ref.probs,
                     extractor=np.array("classifier"), classifier=np.array(classifier.fingerprint),
                     heldout=np.array(heldout.fingerprint()), num_images=np.array(len(heldout)))

    atomic_write(path, write)
    log.info("reference statistics of %d held-out images cached at %s", len(heldout), path)
    return ref


@dataclass
class Evaluation:
    row: dict[str, float]  # the metric columns for this generation
    probs: np.ndarray  # class probabilities of each scored sample (predicted labels, curation)


def evaluate(samples: ImageSet, reference: Reference, classifier: Classifier) -> Evaluation:
    """Score samples against the held-out reference: FID on classifier features, classifier confidence."""
    features, probs = classifier(samples.images)
    row = {"fid": fid(features, reference.mu, reference.sigma), **confidence(probs)}
    return Evaluation(row=row, probs=probs)
