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

Where things live (each module imports only those above it; this one only re-exports):
- `scores`: the scores on feature arrays (FID and its terms, KID, prdc, memorization, class statistics);
- `features`: the extractors (domain classifier, Inception-v3) and the memo that embeds an image once;
- `columns`: column names, each space's suffix, interval bounds' names, the ranges an interval is held to;
- `resampling`: seeded equal-size subsets, their pairing, bootstrap intervals;
- `reference`: a real split's features and statistics, cached as a self-describing file;
- `config`: `MetricsConfig`, the `metrics.*` keys and their checks;
- `spaces`: `Space` (one feature space) and `Metrics` (every space of a run);
- `scoring`: one set's scores in one space (set, class, memorization), each with its interval;
- `evaluation`: `setup_metrics` (once per run) and `evaluate` (once per generation);
- `calibration`: which metric sees which change (not re-exported: `imgcollapse.metrics.calibration`).
"""

from __future__ import annotations

from imgcollapse.metrics.columns import (
    BOUNDED,
    CLASS_COLUMNS,
    PIXEL_COLUMNS,
    SET_COLUMNS,
    SPACE_COLUMNS,
    SUFFIX,
    UNSIGNED,
    empty_columns,
    interval_columns,
)
from imgcollapse.metrics.config import EXTRACTORS, MetricsConfig
from imgcollapse.metrics.evaluation import (
    Evaluation,
    evaluate,
    pixels,
    resolve_extractors,
    scored_index,
    setup_metrics,
    without,
)
from imgcollapse.metrics.reference import (
    REFERENCE_VERSION,
    Reference,
    load_or_build_reference,
    read_reference_meta,
    reference_path,
)
from imgcollapse.metrics.resampling import equal_subsets, interval, paired
from imgcollapse.metrics.scoring import class_scores, memorization_scores, per_class_scores, set_scores
from imgcollapse.metrics.spaces import Metrics, Space

__all__ = [
    # entry points
    "setup_metrics", "evaluate", "Evaluation", "Metrics", "MetricsConfig", "Space",
    # columns
    "SUFFIX", "SET_COLUMNS", "SPACE_COLUMNS", "PIXEL_COLUMNS", "CLASS_COLUMNS", "BOUNDED", "UNSIGNED", "EXTRACTORS",
    "interval_columns", "empty_columns",
    # references
    "REFERENCE_VERSION", "Reference", "reference_path", "load_or_build_reference", "read_reference_meta",
    # building blocks
    "resolve_extractors", "without", "scored_index", "pixels", "equal_subsets", "paired", "interval",
    "set_scores", "per_class_scores", "class_scores", "memorization_scores",
]
