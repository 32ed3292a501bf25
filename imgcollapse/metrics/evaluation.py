"""The two entry points: `setup_metrics` builds every feature space once per run (extractor, cached references,
remembered features) and the real floor; `evaluate` scores one generation in every space."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imgcollapse import faults
from imgcollapse.data import ImageSet, Splits
from imgcollapse.data.transforms import floor_of
from imgcollapse.metrics.columns import CLASS_COLUMNS, SPACE_COLUMNS, SUFFIX, empty_columns, suffixed
from imgcollapse.metrics.config import MetricsConfig
from imgcollapse.metrics.features import (
    Extractor,
    ExtractorUnavailable,
    FeatureMemo,
    image_keys,
    load_inception,
    load_or_train_classifier,
)
from imgcollapse.metrics.reference import load_or_build_reference
from imgcollapse.metrics.scores import class_frequencies, density_deciles, heldout_radii
from imgcollapse.metrics.scoring import class_scores, memorization_scores, set_scores
from imgcollapse.metrics.spaces import Metrics, Space

log = logging.getLogger(__name__)


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

    The metrics classifier trains on the training pool (before any long tail: one ruler for every arm) less the
    floor split, class-balanced, so the floor compares two real sets it never saw, as the samples are."""
    device = torch.device(device)
    labelled = splits.train.labels is not None and splits.train.num_classes is not None
    names = resolve_extractors(config.extractors, gpu=device.type != "cpu", labelled=labelled)
    floor = floor_of(splits.train, splits.heldout, splits.floor)
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
                    without(splits.ruler_pool if splits.ruler_pool is not None else splits.train, floor),
                    splits.heldout, cache_dir, epochs=config.classifier_epochs, seed=config.classifier_seed)
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
        low, high = density_deciles(heldout.features, pool.features, config.nearest_k, config.density_fraction)
        space = Space(memo, heldout, floor_features, low, high, heldout_radii(heldout.features, config.nearest_k))
        metrics.spaces.append(space)
        metrics.baseline.update(suffixed(set_scores(floor_features, space, metrics), space.suffix))
        if name == "classifier" and floor_probs is not None:
            metrics.baseline.update(class_scores(floor_features, floor_probs, space, metrics))
    if not metrics.spaces:
        log.warning("no feature extractor is available: this run records no fidelity, diversity or memorization "
                    "metrics; the chain runs on")
    return metrics


@dataclass
class Evaluation:
    """One generation's scores: its row of metric columns, and what curation and the report take from it."""

    row: dict[str, float | None]  # the metric columns for this generation
    probs: np.ndarray | None  # class probabilities of every sample (predicted labels, curation); None: no classifier
    seconds: dict[str, float] = field(default_factory=dict)  # where the metrics time went


def scored_index(num: int, num_samples: int | None, seed: int) -> np.ndarray:
    """Which samples are scored: all of them, or a subset of `num_samples` drawn with `seed`."""
    if num_samples is None or num_samples >= num:
        return np.arange(num)
    return np.sort(np.random.default_rng(seed).choice(num, num_samples, replace=False))


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
            row.update(suffixed(set_scores(features, space, metrics), space.suffix))
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
