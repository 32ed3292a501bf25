"""What scoring works on: `Space`, one feature space (extractor, held-out reference, real floor), and `Metrics`,
every space of a run with the settings and class facts the scores need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgcollapse.data import ImageSet
from imgcollapse.metrics.columns import SUFFIX
from imgcollapse.metrics.config import MetricsConfig
from imgcollapse.metrics.features import Classifier, FeatureMemo
from imgcollapse.metrics.reference import Reference, describe
from imgcollapse.metrics.scores import sqrt_psd, tail_classes


@dataclass
class Space:
    """One feature space: an extractor that remembers what it has seen, the held-out reference (with what FID's
    fast form needs), and the real floor's features."""

    memo: FeatureMemo
    reference: Reference
    floor: np.ndarray  # features of the floor split: real images the classifier never trained on
    # the real data's own tails, fixed before any generation: held-out images of the lowest- and highest-density
    # decile (density from the real pool), and every held-out image's coverage ball (scores.density_deciles)
    low_density: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    high_density: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    radii: np.ndarray = field(default_factory=lambda: np.zeros(0))
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
            meta[space.name] = describe(space.memo.extractor) | {"fingerprint": space.memo.extractor.fingerprint}
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
