"""`MetricsConfig`: the `metrics.*` keys (Hydra schema and `setup_metrics` argument) and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from imgcollapse.errors import require
from imgcollapse.metrics.features import INCEPTION_SOURCES

EXTRACTORS = ("classifier", "inception")


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
    class_size: int = MISSING  # per-class recall and coverage compare this many images of a class (fixed n and k)
    density_fraction: float = MISSING  # the real data's low- and high-density tails: this share of the held-out split
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
        require(0 < self.density_fraction <= 0.5, "metrics.density_fraction", self.density_fraction,
                "a fraction in (0, 0.5]: the lowest- and highest-density shares must not overlap")
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
        require(self.class_size >= self.nearest_k + 2, "metrics.class_size", self.class_size,
                f"an integer ≥ metrics.nearest_k + 2 = {self.nearest_k + 2}: prdc needs k neighbours besides an image")
        require(self.num_samples is None or self.nearest_k + 1 < self.num_samples <= num_synthetic,
                "metrics.num_samples", self.num_samples,
                f"null (all samples) or an integer in ({self.nearest_k + 1}, num_synthetic={num_synthetic}]")
