"""Reference statistics: a real split's features and statistics under one extractor, computed once and cached as a
self-describing file keyed by extractor, weights, split, image content and version."""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcollapse.data import ImageSet
from imgcollapse.metrics.features import Classifier, Extractor, Inception
from imgcollapse.metrics.scores import mean_cov
from imgcollapse.store import atomic_write

log = logging.getLogger(__name__)

REFERENCE_VERSION = 2  # bump when what a reference file holds changes: invalidates cached references


@dataclass
class Reference:
    """Features of a real split under one extractor, and their statistics: computed once, cached as a
    self-describing file."""

    features: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    probs: np.ndarray | None = None  # class probabilities (classifier only)

    @classmethod
    def from_features(cls, features: np.ndarray, probs: np.ndarray | None = None) -> Reference:
        mu, sigma = mean_cov(features)
        return cls(features, mu, sigma, probs)


def reference_path(cache_dir: Path, extractor: Extractor, images: ImageSet, split: str) -> Path:
    """Cache key made explicit: extractor, its weights' fingerprint, split, content of the images, version."""
    name = f"{extractor.name}-{extractor.fingerprint}-{split}-{images.fingerprint()}-v{REFERENCE_VERSION}.npz"
    return Path(cache_dir) / "reference" / name


def describe(extractor: Extractor) -> dict[str, Any]:
    """What a reference file and run.json record about an extractor beyond its name and fingerprint."""
    if isinstance(extractor, Classifier):
        return {"held_out_accuracy": extractor.accuracy}
    if isinstance(extractor, Inception):
        return {"source": extractor.source, "weights": str(extractor.path), "resize": "clean-fid clean (PIL bicubic)"}
    return {}


def load_or_build_reference(images: ImageSet, extractor: Extractor, cache_dir: Path,
                            split: str = "heldout") -> Reference:
    """Features and statistics of a real split under `extractor`, from the cache or computed and cached."""
    path = reference_path(cache_dir, extractor, images, split)
    if path.exists():
        try:
            with np.load(path) as z:
                return Reference(z["features"], z["mu"], z["sigma"], z.get("probs"))
        except Exception as e:  # truncated, corrupt or foreign: a cache is rebuilt, never trusted
            log.warning("cached reference %s cannot be read (%s: %s); rebuilding it", path, type(e).__name__, e)
            path.unlink(missing_ok=True)
    features, probs = extractor(images.images)
    ref = Reference.from_features(features, probs)
    meta = {
        "version": REFERENCE_VERSION, "extractor": extractor.name, "extractor_fingerprint": extractor.fingerprint,
        **describe(extractor), "split": split, "data_fingerprint": images.fingerprint(),
        "num_images": len(images), "image_shape": list(images.shape), "feature_dim": int(features.shape[1]),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    arrays = {"features": ref.features, "mu": ref.mu, "sigma": ref.sigma, "meta": np.array(json.dumps(meta))}
    if probs is not None:
        arrays["probs"] = probs

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    log.info("%s features of %d %s images cached at %s", extractor.name, len(images), split, path)
    return ref


def read_reference_meta(path: Path) -> dict[str, Any]:
    """What a cached reference file says about itself."""
    with np.load(path) as z:
        return json.loads(str(z["meta"]))
