"""Metrics front door: `setup_metrics` builds every feature space once per run (extractor, cached held-out
reference, remembered features), and `evaluate(samples, train_set, metrics)` scores one generation.

Columns carry their feature space in their name: `fid`, `kid`, `precision`, ... come from the domain
classifier; `fid_inception`, `kid_inception`, ... from Inception-v3. Class statistics come from the
classifier's predictions. A space that cannot be built leaves its columns empty (null) and says why.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING

from imgcollapse import faults
from imgcollapse.data import ImageSet, Splits
from imgcollapse.errors import require
from imgcollapse.metrics.features import (
    INCEPTION_SOURCES,
    Classifier,
    Extractor,
    ExtractorUnavailable,
    FeatureMemo,
    Inception,
    load_inception,
    load_or_train_classifier,
)
from imgcollapse.metrics.scores import (
    class_frequencies,
    class_statistics,
    confidence,
    fid,
    kid,
    mean_cov,
    memorization,
    prdc,
    tail_classes,
)
from imgcollapse.store import atomic_write

log = logging.getLogger(__name__)

REFERENCE_VERSION = 2  # bump when what a reference file holds changes: invalidates cached references
EXTRACTORS = ("classifier", "inception")
SUFFIX = {"classifier": "", "inception": "_inception"}  # column suffix of each feature space
SPACE_COLUMNS = ("fid", "kid", "precision", "recall", "density", "coverage", "memorization_ratio", "near_copy_share")
CLASS_COLUMNS = ("confidence", "confident_share", "class_kl", "class_tv", "class_entropy", "tail_ratio", "lost_classes")


# Reference statistics --------------------------------------------------------------------------------
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


def _describe(extractor: Extractor) -> dict[str, Any]:
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
        **_describe(extractor), "split": split, "data_fingerprint": images.fingerprint(),
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


# Setup ------------------------------------------------------------------------------------------------
@dataclass
class MetricsConfig:
    """`metrics.*`: how each generation is scored (values and their reasons: conf/metrics/default.yaml)."""

    extractors: Any = MISSING  # "auto" or a list drawn from EXTRACTORS
    num_samples: int | None = MISSING  # samples scored per generation (None: all)
    nearest_k: int = MISSING  # prdc's k
    kid_subsets: int = MISSING
    kid_subset_size: int = MISSING
    near_copy_ratio: float = MISSING
    tail_fraction: float = MISSING
    lost_threshold: float = MISSING
    classifier_epochs: int = MISSING
    classifier_seed: int = MISSING
    inception_weights: str = MISSING
    inception_source: str = MISSING
    inception_download: bool = MISSING
    inception_batch_size: int = MISSING

    def check(self) -> None:
        """Ranges and enums of the metrics keys (sizes against num_synthetic: config.validate)."""
        allowed = f"'auto' or a non-empty list drawn from {list(EXTRACTORS)}"
        if isinstance(self.extractors, str):
            require(self.extractors == "auto", "metrics.extractors", self.extractors, allowed)
        else:
            names = list(self.extractors)
            require(0 < len(names) == len(set(names)) and all(e in EXTRACTORS for e in names),
                    "metrics.extractors", names, allowed)
        require(self.nearest_k >= 1, "metrics.nearest_k", self.nearest_k, "an integer ≥ 1")
        require(self.kid_subsets >= 1, "metrics.kid_subsets", self.kid_subsets, "an integer ≥ 1")
        require(self.kid_subset_size >= 2, "metrics.kid_subset_size", self.kid_subset_size, "an integer ≥ 2")
        require(0 < self.near_copy_ratio <= 1, "metrics.near_copy_ratio", self.near_copy_ratio, "a fraction in (0, 1]")
        require(0 < self.tail_fraction <= 1, "metrics.tail_fraction", self.tail_fraction, "a fraction in (0, 1]")
        require(0 < self.lost_threshold <= 1, "metrics.lost_threshold", self.lost_threshold, "a fraction in (0, 1]")
        require(self.classifier_epochs >= 1, "metrics.classifier_epochs", self.classifier_epochs, "an integer ≥ 1")
        require(self.classifier_seed >= 0, "metrics.classifier_seed", self.classifier_seed, "an integer ≥ 0")
        require(bool(self.inception_weights), "metrics.inception_weights", self.inception_weights, "a file path")
        require(self.inception_source in INCEPTION_SOURCES, "metrics.inception_source", self.inception_source,
                f"one of {list(INCEPTION_SOURCES)}")
        require(self.inception_batch_size > 0, "metrics.inception_batch_size", self.inception_batch_size,
                "an integer > 0")

    def check_sizes(self, num_synthetic: int) -> None:
        """prdc needs k neighbours of each sample; a scored subset must be one of the samples."""
        require(num_synthetic > self.nearest_k + 1, "metrics.nearest_k", self.nearest_k,
                f"smaller than num_synthetic - 1 = {num_synthetic - 1}: prdc needs k neighbours of each sample")
        require(self.num_samples is None or self.nearest_k + 1 < self.num_samples <= num_synthetic,
                "metrics.num_samples", self.num_samples,
                f"null (all samples) or an integer in ({self.nearest_k + 1}, num_synthetic={num_synthetic}]")


@dataclass
class Space:
    """One feature space: an extractor that remembers what it has seen, and the held-out reference."""

    memo: FeatureMemo
    reference: Reference

    @property
    def name(self) -> str:
        return self.memo.name

    @property
    def suffix(self) -> str:
        return SUFFIX[self.name]


@dataclass
class Metrics:
    """Everything `evaluate` needs, built once per run by `setup_metrics`."""

    names: list[str]  # the extractors asked for, in column order
    spaces: list[Space]  # those that could be built
    config: MetricsConfig
    seed: int  # draws the scored subset and KID's subsets
    classifier: Classifier | None
    real_freq: np.ndarray | None  # class frequencies of the real training pool (what generation 0 learned)
    class_names: list[str] | None = None  # name the class_freq_<name> columns
    unavailable: dict[str, str] = field(default_factory=dict)  # extractor -> why its columns are empty
    baseline: dict[str, float] = field(default_factory=dict)  # real training pool vs held-out: the floor

    def metadata(self) -> dict[str, Any]:
        """What run.json records about the metrics."""
        meta: dict[str, Any] = {
            "extractors": [s.name for s in self.spaces],
            "unavailable": self.unavailable,
            "real_baseline": self.baseline,
            "num_samples": self.config.num_samples,
        }
        for space in self.spaces:
            meta[space.name] = _describe(space.memo.extractor) | {"fingerprint": space.memo.extractor.fingerprint}
        if self.real_freq is not None:
            meta["real_class_frequencies"] = [float(f) for f in self.real_freq]
            meta["tail_classes"] = [int(k) for k in tail_classes(self.real_freq, self.config.tail_fraction)]
        return meta


def resolve_extractors(requested: str | list[str], *, gpu: bool, labelled: bool) -> list[str]:
    """`auto`: the classifier on CPU (Inception runs ~12 images/s on 2 CPU cores), both on GPU, and both for
    unlabelled data, where no classifier can be trained and Inception is the one extractor left. A list is
    taken as given."""
    if requested != "auto":
        return list(requested)
    return ["classifier", "inception"] if gpu or not labelled else ["classifier"]


def setup_metrics(splits: Splits, cache_dir: Path, config: MetricsConfig, *, seed: int,
                  device: torch.device | str = "cpu") -> Metrics:
    """Build each requested feature space (extractor, cached held-out and training-pool features) and the
    real-data baseline; a space that cannot be built is logged once with the reason and left out."""
    device = torch.device(device)
    labelled = splits.train.labels is not None and splits.train.num_classes is not None
    names = resolve_extractors(config.extractors, gpu=device.type != "cpu", labelled=labelled)
    metrics = Metrics(names, [], config, seed, None, None)
    for name in names:
        try:
            if name == "classifier":
                if not labelled:
                    raise ExtractorUnavailable("the dataset has no labels, so no domain classifier can be trained")
                extractor: Extractor = load_or_train_classifier(
                    splits.train, splits.heldout, cache_dir, epochs=config.classifier_epochs,
                    seed=config.classifier_seed)
                metrics.classifier = extractor  # type: ignore[assignment]
                metrics.real_freq = class_frequencies(splits.train.labels.numpy(), splits.train.num_classes)
                metrics.class_names = [str(n) for n in splits.train.class_names]
            else:
                extractor = load_inception(Path(config.inception_weights), source=config.inception_source,
                                           download_missing=config.inception_download, device=device,
                                           batch_size=config.inception_batch_size)
        except ExtractorUnavailable as e:
            metrics.unavailable[name] = str(e)
            columns = [c + SUFFIX[name] for c in SPACE_COLUMNS] + (list(CLASS_COLUMNS) if name == "classifier" else [])
            log.warning("%s metrics cannot be computed (%s stay empty): %s", name, ", ".join(columns), e)
            continue
        memo = FeatureMemo(extractor)
        heldout = load_or_build_reference(splits.heldout, extractor, cache_dir, "heldout")
        pool = load_or_build_reference(splits.train, extractor, cache_dir, "train")
        memo.remember(splits.train.images, pool.features, pool.probs)  # the real part of every training set
        space = Space(memo, heldout)
        metrics.spaces.append(space)
        metrics.baseline.update(space_scores(pool.features, None, space, config, seed))
    if not metrics.spaces:
        log.warning("no feature extractor is available: this run records no fidelity, diversity or memorization "
                    "metrics; the chain runs on")
    return metrics


# Scoring ------------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    row: dict[str, float | None]  # the metric columns for this generation
    probs: np.ndarray | None  # class probabilities of every sample (predicted labels, curation); None: no classifier
    seconds: dict[str, float] = field(default_factory=dict)  # where the metrics time went


def scored_index(num: int, num_samples: int | None, seed: int) -> np.ndarray:
    """Which samples are scored: all of them, or a subset of `num_samples` drawn with `seed`."""
    if num_samples is None or num_samples >= num:
        return np.arange(num)
    return np.sort(np.random.default_rng(seed).choice(num, num_samples, replace=False))


def space_scores(features: np.ndarray, train_features: np.ndarray | None, space: Space, config: MetricsConfig,
                 seed: int, seconds: dict[str, float] | None = None) -> dict[str, float]:
    """FID, KID, precision/recall/density/coverage and (given the training set) memorization in one space."""
    seconds = {} if seconds is None else seconds
    ref, name = space.reference, space.name
    with _timed(seconds, f"{name}_fid"):
        row = {"fid": fid(features, ref.mu, ref.sigma)}
    with _timed(seconds, f"{name}_kid"):
        row["kid"] = kid(features, ref.features, num_subsets=config.kid_subsets,
                         subset_size=config.kid_subset_size, seed=seed)
    with _timed(seconds, f"{name}_prdc"):
        row.update(prdc(features, ref.features, config.nearest_k))
    if train_features is not None:
        with _timed(seconds, f"{name}_memorization"):
            row.update(memorization(features, train_features, ref.features, near_copy_ratio=config.near_copy_ratio))
    return {k + space.suffix: v for k, v in row.items()}


def evaluate(samples: ImageSet, train_set: ImageSet, metrics: Metrics) -> Evaluation:
    """Score a generation's samples against the held-out split in every feature space; memorization against
    `train_set`, the data that generation's model learned from."""
    s, seconds = metrics.config, {}
    idx = scored_index(len(samples), s.num_samples, metrics.seed)
    scored = samples.images[idx]
    row: dict[str, float | None] = {}
    probs = None
    spaces = {space.name: space for space in metrics.spaces}
    for name in metrics.names:
        space = spaces.get(name)
        if space is None:  # unavailable: its columns stay empty (the reason is in run.json)
            row.update(dict.fromkeys((c + SUFFIX[name] for c in SPACE_COLUMNS), None))
            row.update(dict.fromkeys(CLASS_COLUMNS if name == "classifier" else (), None))
            continue
        with _timed(seconds, f"{name}_features"):
            if name == "classifier":  # its predictions label every sample, scored or not: embed each one once
                all_features, probs = space.memo(samples.images)
                features = all_features[idx]
            else:  # a slow extractor (Inception) embeds only the scored subset
                features, _ = space.memo(scored)
            train_features, _ = space.memo(train_set.images)  # pool and earlier samples: looked up, not computed
        faults.reached("metrics")
        row.update(space_scores(features, train_features, space, s, metrics.seed, seconds))
        if probs is not None and metrics.real_freq is not None and name == "classifier":
            with _timed(seconds, "classifier_classes"):
                row.update(confidence(probs[idx]))
                row.update(class_statistics(probs[idx].argmax(1), metrics.real_freq, tail_fraction=s.tail_fraction,
                                            lost_threshold=s.lost_threshold, class_names=metrics.class_names))
    log.debug("metrics seconds: %s", {k: round(v, 3) for k, v in seconds.items()})
    return Evaluation(row=row, probs=probs, seconds=seconds)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    began = time.perf_counter()
    yield
    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - began
