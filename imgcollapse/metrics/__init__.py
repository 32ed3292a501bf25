"""Metrics front door: `setup_metrics` builds every feature space once per run (extractor, cached held-out
reference, remembered features) and the real floor; `evaluate(samples, train_set, metrics, null)` scores one
generation.

Columns carry their feature space in their name: `fid`, `kid`, `precision`, ... come from the domain
classifier; `fid_inception`, `kid_inception`, ... from Inception-v3; `near_copy_share_pixel`, ... from the
pixels. Class statistics come from the classifier's predictions. A space that cannot be built leaves its columns
empty (null) and says why.

Rulers, not just numbers (docs/METRICS.md):
- set scores (FID and its terms, KID, precision/recall/density/coverage) compare equal-size sets: the held-out
  reference against `metrics.subsets` seeded subsets of the samples of the same size, averaged (`_sd`: their
  spread); the real floor uses the same size;
- every score has a 95% interval (`_lo`, `_hi`): the value ± 1.96 bootstrap standard errors, from
  `metrics.bootstrap` seeded resamples of the scored samples;
- memorization is measured against a null drawn from the distribution the training set came from.
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
from imgcollapse.data.transforms import floor_split
from imgcollapse.errors import require
from imgcollapse.metrics.features import (
    INCEPTION_SOURCES,
    Classifier,
    Extractor,
    ExtractorUnavailable,
    FeatureMemo,
    Inception,
    image_keys,
    load_inception,
    load_or_train_classifier,
)
from imgcollapse.metrics.scores import (
    MEMORIZATION,
    PRDC,
    class_frequencies,
    class_statistics,
    confidence,
    frechet_terms,
    kid,
    mean_cov,
    memorization,
    prdc,
    sqrt_psd,
    tail_classes,
    within_class_mean_term,
)
from imgcollapse.store import atomic_write

log = logging.getLogger(__name__)

REFERENCE_VERSION = 2  # bump when what a reference file holds changes: invalidates cached references
EXTRACTORS = ("classifier", "inception")
SUFFIX = {"classifier": "", "inception": "_inception", "pixel": "_pixel"}  # column suffix of each feature space
SET_COLUMNS = ("fid", "fid_mean", "fid_cov", "kid", *PRDC)  # equal-size set comparisons (each with `_sd`)
SPACE_COLUMNS = (*SET_COLUMNS, *MEMORIZATION)
PIXEL_COLUMNS = tuple(c + SUFFIX["pixel"] for c in MEMORIZATION)
CLASS_COLUMNS = ("fid_mean_within", "confidence", "confident_share", "class_js", "class_kl", "class_kl_real",
                 "class_tv", "class_entropy", "tail_ratio", "lost_classes", "recall_tail", "coverage_tail",
                 "recall_head", "coverage_head")
BOUNDED = {"precision", "recall", "coverage", "near_copy_share", "null_near_copy_share", "confidence",
           "confident_share", "class_js", "class_tv", "recall_tail", "coverage_tail", "recall_head", "coverage_head"}
# (not KID: unbiased, it can dip below 0)
UNSIGNED = {"fid", "fid_mean", "fid_cov", "density", "train_distance", "null_distance", "memorization_ratio",
            "class_kl", "class_kl_real", "class_entropy", "tail_ratio", "lost_classes"}


def interval_columns(column: str) -> tuple[str, str]:
    """The names of a column's 95% interval bounds."""
    return f"{column}_lo", f"{column}_hi"


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
    subsets: int = MISSING  # equal-size subsets of the samples each set score averages over
    bootstrap: int = MISSING  # resamples behind each 95% interval
    num_null: int | None = MISSING  # memorization's null draws per generation (None: the held-out split's size)
    calibrate: bool = MISSING  # run (or read from the cache) the calibration when a run starts
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
        require(self.subsets >= 1, "metrics.subsets", self.subsets, "an integer ≥ 1")
        require(self.bootstrap == 0 or self.bootstrap >= 10, "metrics.bootstrap", self.bootstrap,
                "0 (no intervals) or an integer ≥ 10 (fewer cannot estimate a standard error)")
        require(self.num_null is None or self.num_null >= 10, "metrics.num_null", self.num_null,
                "null (the held-out split's size) or an integer ≥ 10")
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
    """One feature space: an extractor that remembers what it has seen, the held-out reference (with what FID's
    fast form needs), and the real floor's features."""

    memo: FeatureMemo
    reference: Reference
    floor: np.ndarray  # features of the floor split: real images the classifier never trained on
    ref_sqrt: np.ndarray = field(init=False)
    ref_trace: float = field(init=False)

    def __post_init__(self) -> None:
        self.ref_sqrt = sqrt_psd(self.reference.sigma)
        self.ref_trace = float(np.trace(self.reference.sigma))

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
    seed: int  # draws the scored subset, the equal-size subsets, the bootstrap and KID's subsets
    classifier: Classifier | None
    real_freq: np.ndarray | None  # class frequencies of the real training pool (what generation 0 learned)
    class_names: list[str] | None = None  # name the class_freq_<name> columns
    heldout_labels: np.ndarray | None = None  # the reference's classes: per-class recall and coverage
    size: int = 0  # the equal size every set score compares at (the held-out split, the floor and the samples')
    unavailable: dict[str, str] = field(default_factory=dict)  # extractor -> why its columns are empty
    baseline: dict[str, float] = field(default_factory=dict)  # the real floor: two unseen real sets at `size`

    def metadata(self) -> dict[str, Any]:
        """What run.json records about the metrics."""
        meta: dict[str, Any] = {
            "extractors": [s.name for s in self.spaces],
            "unavailable": self.unavailable,
            "real_baseline": self.baseline,
            "num_samples": self.config.num_samples,
            "equal_size": self.size,
            "subsets": self.config.subsets,
            "bootstrap": self.config.bootstrap,
        }
        for space in self.spaces:
            meta[space.name] = _describe(space.memo.extractor) | {"fingerprint": space.memo.extractor.fingerprint}
        if self.real_freq is not None:
            meta["real_class_frequencies"] = [float(f) for f in self.real_freq]
            meta["tail_classes"] = [int(k) for k in tail_classes(self.real_freq, self.config.tail_fraction)]
        return meta

    def predict(self, images: ImageSet) -> np.ndarray | None:
        """The classifier's class probabilities of `images` (None without a classifier); remembered like any."""
        for space in self.spaces:
            if space.name == "classifier":
                return space.memo(images.images)[1]
        return None


def resolve_extractors(requested: str | list[str], *, gpu: bool, labelled: bool) -> list[str]:
    """`auto`: the classifier on CPU (Inception runs ~12 images/s on 2 CPU cores), both on GPU, and both for
    unlabelled data, where no classifier can be trained and Inception is the one extractor left. A list is
    taken as given."""
    if requested != "auto":
        return list(requested)
    return ["classifier", "inception"] if gpu or not labelled else ["classifier"]


def without(pool: ImageSet, excluded: ImageSet) -> ImageSet:
    """`pool` less every image that is also in `excluded` (by content)."""
    drop = set(image_keys(excluded.images))
    return pool.subset([i for i, key in enumerate(image_keys(pool.images)) if key not in drop])


def setup_metrics(splits: Splits, cache_dir: Path, config: MetricsConfig, *, seed: int,
                  device: torch.device | str = "cpu", num_scored: int | None = None) -> Metrics:
    """Build each requested feature space (extractor, cached held-out and training-pool features), and the real
    floor at the size the rows use (`num_scored`: samples scored per generation); a space that cannot be built is
    logged once with the reason and left out.

    The metrics classifier trains on the training pool less the floor split, class-balanced, so the floor compares
    two real sets it never saw, as the samples are."""
    device = torch.device(device)
    labelled = splits.train.labels is not None and splits.train.num_classes is not None
    names = resolve_extractors(config.extractors, gpu=device.type != "cpu", labelled=labelled)
    floor = splits.floor if splits.floor is not None else floor_split(splits.train, len(splits.heldout), 0)
    size = min(len(splits.heldout), len(floor), num_scored or len(floor))
    metrics = Metrics(names, [], config, seed, None, None, size=size)
    if labelled:
        metrics.heldout_labels = splits.heldout.labels.numpy()
    for name in names:
        try:
            if name == "classifier":
                if not labelled:
                    raise ExtractorUnavailable("the dataset has no labels, so no domain classifier can be trained")
                extractor: Extractor = load_or_train_classifier(
                    without(splits.train, floor), splits.heldout, cache_dir, epochs=config.classifier_epochs,
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
        memo.remember(splits.heldout.images, heldout.features, heldout.probs)  # generation 0's memorization null
        floor_features, floor_probs = memo(floor.images)
        space = Space(memo, heldout, floor_features)
        metrics.spaces.append(space)
        metrics.baseline.update(_suffixed(set_scores(floor_features, space, metrics), space.suffix))
        if name == "classifier" and floor_probs is not None:
            metrics.baseline.update(class_scores(floor_features, floor_probs, space, metrics))
    if not metrics.spaces:
        log.warning("no feature extractor is available: this run records no fidelity, diversity or memorization "
                    "metrics; the chain runs on")
    return metrics


# Resampling ---------------------------------------------------------------------------------------------
def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *tags]))


def equal_subsets(num: int, size: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` seeded subsets of `size` of range(num), without replacement (one, all of it, when size ≥ num)."""
    if size >= num:
        return [np.arange(num)]
    return [np.sort(rng.choice(num, size, replace=False)) for _ in range(count)]


def paired(draws: list[np.ndarray], ref_draws: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sample draws matched with reference draws, the shorter list repeated."""
    count = max(len(draws), len(ref_draws))
    return [(draws[i % len(draws)], ref_draws[i % len(ref_draws)]) for i in range(count)]


def interval(value: float, replicates: np.ndarray, column: str) -> tuple[float, float]:
    """value ± 1.96 bootstrap standard errors, held to the column's range.

    Normal, not percentile: prdc's recall and coverage are biased low on resamples with repeated samples, which
    shifts percentiles but barely changes their spread (docs/METRICS.md)."""
    finite = replicates[np.isfinite(replicates)]
    if not np.isfinite(value) or len(finite) < 2:
        return float("nan"), float("nan")
    half = 1.96 * float(np.std(finite, ddof=1))
    lo, hi = value - half, value + half
    if column in BOUNDED or column.startswith("class_freq_"):
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    elif column in UNSIGNED:
        lo = max(lo, 0.0)
    return lo, hi


def _summarise(per_draw: list[dict[str, float]], replicates: list[dict[str, float]], columns: tuple[str, ...],
               sd: bool) -> dict[str, float]:
    """Mean over the equal-size draws, their spread (`_sd`), and the bootstrap interval of each column."""
    row: dict[str, float] = {}
    for c in columns:
        values = np.array([d[c] for d in per_draw], dtype=np.float64)
        row[c] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        if sd:
            # one draw (samples and reference both of the equal size) has no spread to report
            row[f"{c}_sd"] = float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else float("nan")
        boot = np.array([r[c] for r in replicates], dtype=np.float64)
        row.update(zip(interval_columns(c), interval(row[c], boot, c), strict=True))
    return row


def _suffixed(row: dict[str, float], suffix: str) -> dict[str, float]:
    """Column names carry the space: `fid_sd` in the Inception space is `fid_inception_sd`."""
    if not suffix:
        return row
    out = {}
    for key, value in row.items():
        for base in SPACE_COLUMNS:
            if key == base or key.startswith(base + "_") and key[len(base):] in ("_sd", "_lo", "_hi"):
                key = base + suffix + key[len(base):]
                break
        out[key] = value
    return out


# Scoring ------------------------------------------------------------------------------------------------
def _set_draw(features: np.ndarray, ref: np.ndarray, space: Space, config: MetricsConfig, full_ref: bool,
              seed: int) -> dict[str, float]:
    """Every set score of one draw of samples against one draw of the reference (of equal size)."""
    if full_ref:
        mean_term, cov_term = frechet_terms(features, space.reference.mu, space.ref_sqrt, space.ref_trace)
    else:
        mu, sigma = mean_cov(ref)
        mean_term, cov_term = frechet_terms(features, mu, sqrt_psd(sigma), float(np.trace(sigma)))
    n = len(features)
    # equal sets no larger than KID's subset size: one "subset" is all of both, and every subset would be the same
    subsets = 1 if config.kid_subset_size >= n else config.kid_subsets
    row = {"fid": mean_term + cov_term, "fid_mean": mean_term, "fid_cov": cov_term,
           "kid": kid(features, ref, num_subsets=subsets, subset_size=config.kid_subset_size, seed=seed)}
    row.update(prdc(features, ref, config.nearest_k))
    return row


def set_scores(features: np.ndarray, space: Space, metrics: Metrics) -> dict[str, float]:
    """FID (and its two terms), KID, precision/recall/density/coverage of `features` against the held-out
    reference at the equal size: averaged over seeded subsets, with their spread and bootstrap intervals."""
    config, ref = metrics.config, space.reference.features
    size = min(metrics.size, len(features))
    rng = _rng(metrics.seed, 1)
    draws = equal_subsets(len(features), size, config.subsets, rng)
    ref_draws = equal_subsets(len(ref), size, config.subsets, rng)  # fewer samples than held-out: the reference
    # is the one subsampled, `subsets` times
    full_ref = len(ref_draws[0]) == len(ref)
    per_draw = [_set_draw(features[i], ref[r], space, config, full_ref, metrics.seed)
                for i, r in paired(draws, ref_draws)]
    replicates = [_set_draw(features[rng.integers(0, len(features), size)], ref[ref_draws[0]], space, config,
                            full_ref, metrics.seed) for _ in range(config.bootstrap)]
    return _summarise(per_draw, replicates, SET_COLUMNS, sd=True)


def per_class_scores(features: np.ndarray, predicted: np.ndarray, space: Space, metrics: Metrics,
                     names: list[str], tail: np.ndarray) -> dict[str, float]:
    """Recall and coverage of each class: its held-out images against the samples the classifier assigns to it,
    at equal size (the smaller of the two); 0 for a class no sample falls in; means over tail and head classes."""
    config, ref, labels = metrics.config, space.reference.features, metrics.heldout_labels
    rng = _rng(metrics.seed, 2)
    boot_rng = _rng(metrics.seed, 5)  # its own stream: the values never depend on how many resamples follow them
    row: dict[str, float] = {}
    draws: dict[int, list[dict[str, float]]] = {}
    boots: dict[int, list[dict[str, float]]] = {}
    for c, name in enumerate(names):
        real, mine = ref[labels == c], features[predicted == c]
        size = min(len(real), len(mine))
        if size < 3:  # none, or one or two samples (or real images): no diversity to measure, scored 0 so that
            # a vanishing class pulls its group's mean down instead of dropping out of it
            draws[c] = [{"recall": 0.0, "coverage": 0.0}]
            boots[c] = [{"recall": 0.0, "coverage": 0.0}] * config.bootstrap
        else:
            k = min(config.nearest_k, size - 2)  # a class of a few samples: as many neighbours as it has
            subs, ref_subs = (equal_subsets(len(mine), size, config.subsets, rng),
                              equal_subsets(len(real), size, config.subsets, rng))
            draws[c] = [prdc(mine[i], real[r], k) for i, r in paired(subs, ref_subs)]
            boots[c] = [prdc(mine[boot_rng.integers(0, len(mine), size)], real[ref_subs[0]], k)
                        for _ in range(config.bootstrap)]
        summary = _summarise(draws[c], boots[c], ("recall", "coverage"), sd=False)
        row.update({key.replace("recall", f"recall_class_{name}", 1).replace("coverage", f"coverage_class_{name}", 1):
                    v for key, v in summary.items()})
    head = np.setdiff1d(np.arange(len(names)), tail)
    for group, classes in (("tail", tail), ("head", head)):
        for score in ("recall", "coverage"):
            column = f"{score}_{group}"
            value = _nanmean([row[f"{score}_class_{names[c]}"] for c in classes])
            boot = np.array([_nanmean([boots[c][b][score] for c in classes]) for b in range(config.bootstrap)])
            row[column] = float(value)
            row.update(zip(interval_columns(column), interval(float(value), boot, column), strict=True))
    return row


def _nanmean(values: list[float]) -> float:
    """Mean of the finite values (NaN when none is): a class too small to score leaves the group mean to the rest."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def class_scores(features: np.ndarray, probs: np.ndarray, space: Space, metrics: Metrics) -> dict[str, float]:
    """The classifier's view of a set: confidence, class shares and divergences from the real pool's, per-class
    recall and coverage; each with a bootstrap interval over the set's samples."""
    config = metrics.config
    predicted = probs.argmax(1)
    kwargs = {"tail_fraction": config.tail_fraction, "lost_threshold": config.lost_threshold,
              "class_names": metrics.class_names}

    labels = metrics.heldout_labels

    def score(index: np.ndarray) -> dict[str, float]:
        row = {**confidence(probs[index]), **class_statistics(predicted[index], metrics.real_freq, **kwargs)}
        if labels is not None:
            row["fid_mean_within"] = within_class_mean_term(features[index], predicted[index],
                                                            space.reference.features, labels, metrics.real_freq)
        return row

    row = score(np.arange(len(probs)))
    rng = _rng(metrics.seed, 3)
    replicates = [score(rng.integers(0, len(probs), len(probs))) for _ in range(config.bootstrap)]
    for column in list(row):
        boot = np.array([r[column] for r in replicates], dtype=np.float64)
        row.update(zip(interval_columns(column), interval(row[column], boot, column), strict=True))
    if metrics.heldout_labels is not None:
        tail = tail_classes(metrics.real_freq, config.tail_fraction)
        row.update(per_class_scores(features, predicted, space, metrics, metrics.class_names, tail))
    return row


def memorization_scores(features: np.ndarray, train: np.ndarray, null: np.ndarray | None, metrics: Metrics,
                        suffix: str) -> dict[str, float]:
    """Memorization in one space (see scores.memorization) with bootstrap intervals over samples and null."""
    row, arrays = memorization(features, train, null, near_copy_ratio=metrics.config.near_copy_ratio)
    rng = _rng(metrics.seed, 4)
    boot: dict[str, list[float]] = {c: [] for c in MEMORIZATION}
    for _ in range(metrics.config.bootstrap if arrays else 0):
        i = rng.integers(0, len(features), len(features))
        boot["near_copy_share"].append(arrays["copies"][i].mean())
        d1 = float(np.median(arrays["d1"][i]))
        boot["train_distance"].append(d1)
        if "null_d1" in arrays:
            j = rng.integers(0, len(arrays["null_d1"]), len(arrays["null_d1"]))
            scale = float(np.median(arrays["null_d1"][j]))
            boot["null_distance"].append(scale)
            boot["null_near_copy_share"].append(arrays["null_copies"][j].mean())
            boot["memorization_ratio"].append(d1 / scale if scale > 0 else np.nan)
    for column in MEMORIZATION:
        row.update(zip(interval_columns(column), interval(row[column], np.array(boot[column], dtype=np.float64),
                                                           column), strict=True))
    return _suffixed(row, suffix)


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


def empty_columns(name: str) -> list[str]:
    """Every column of an unavailable space (the reason is in run.json)."""
    columns = [c + SUFFIX[name] for c in SPACE_COLUMNS]
    columns += [c + SUFFIX[name] + "_sd" for c in SET_COLUMNS]
    columns += [b for c in SPACE_COLUMNS for b in interval_columns(c + SUFFIX[name])]
    if name == "classifier":
        columns += list(CLASS_COLUMNS) + [b for c in CLASS_COLUMNS for b in interval_columns(c)]
    return columns


def pixels(images: torch.Tensor) -> np.ndarray:
    """Images as flat float vectors: the pixel space of memorization."""
    return images.reshape(len(images), -1).numpy().astype(np.float64)


def evaluate(samples: ImageSet, train_set: ImageSet, metrics: Metrics, null: ImageSet | None = None) -> Evaluation:
    """Score a generation's samples against the held-out split in every feature space; memorization against
    `train_set`, the data that generation's model learned from, with `null` (draws from the distribution that
    training set came from, never trained on) as its reference; None: no memorization ratio."""
    s, seconds = metrics.config, {}
    idx = scored_index(len(samples), s.num_samples, metrics.seed)
    scored = samples.images[idx]
    row: dict[str, float | None] = {}
    probs = None
    spaces = {space.name: space for space in metrics.spaces}
    for name in metrics.names:
        space = spaces.get(name)
        if space is None:  # unavailable: its columns stay empty (the reason is in run.json)
            row.update(dict.fromkeys(empty_columns(name), None))
            continue
        with _timed(seconds, f"{name}_features"):
            if name == "classifier":  # its predictions label every sample, scored or not: embed each one once
                all_features, probs = space.memo(samples.images)
                features = all_features[idx]
            else:  # a slow extractor (Inception) embeds only the scored subset
                features, _ = space.memo(scored)
            train_features, _ = space.memo(train_set.images)  # pool and earlier samples: looked up, not computed
            null_features = space.memo(null.images)[0] if null is not None else None
        faults.reached("metrics")
        with _timed(seconds, f"{name}_sets"):
            row.update(_suffixed(set_scores(features, space, metrics), space.suffix))
        with _timed(seconds, f"{name}_memorization"):
            row.update(memorization_scores(features, train_features, null_features, metrics, space.suffix))
        if probs is not None and metrics.real_freq is not None and name == "classifier":
            with _timed(seconds, "classifier_classes"):
                row.update(class_scores(features, probs[idx], space, metrics))
    with _timed(seconds, "pixel_memorization"):
        row.update(memorization_scores(pixels(scored), pixels(train_set.images),
                                       pixels(null.images) if null is not None else None, metrics, SUFFIX["pixel"]))
    log.debug("metrics seconds: %s", {k: round(v, 3) for k, v in seconds.items()})
    return Evaluation(row=row, probs=probs, seconds=seconds)



@contextlib.contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    began = time.perf_counter()
    yield
    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - began
