"""What a reader needs to read each metric column: which way is better, its natural range, its feature space, and
its real-data value (the same score of the real training pool against the held-out split).

Columns are `<metric><suffix>`, the suffix naming the feature space (`` classifier, `_inception` Inception-v3:
imgcollapse.metrics.SUFFIX). Unknown columns get a plain title and matplotlib's own range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from imgcollapse import metric_facts

# the facts live in one table (imgcollapse/metric_facts.py); this module reads them for the pages
SPACES = metric_facts.SPACES
Info = metric_facts.Fact
METRICS = metric_facts.FACTS
HOUSEKEEPING_PREFIXES = ("num_", "share_gen_", "model_train_loss_",  # training-set sizes and sources, members' losses,
                         "pool_", "filter_", "detector_", "watermark_")  # a contaminated pool and its filter
HOUSEKEEPING = ("train_loss", "model_floor_coordinates")
MEMBER_COLUMNS = metric_facts.MEMBER_COLUMNS  # a population member's own panels in the run report


split = metric_facts.split


def info(column: str) -> Info | None:
    return METRICS.get(split(column)[0])


def is_housekeeping(column: str) -> bool:
    """Timings, training-set sizes and sources, the training losses: how the chain ran, not what it made."""
    return column.startswith(HOUSEKEEPING_PREFIXES) or column.endswith("seconds") or column in HOUSEKEEPING


def title(column: str) -> str:
    """`fid ↓`: the column and which way is better (`density, best ≈1`)."""
    found = info(column)
    if found is None:
        return column
    return f"{column}, best ≈1" if found.better == "→1" else f"{column} {found.better}"


def space(column: str) -> str | None:
    """What a column is measured on: a feature space, or the classifier's predicted classes."""
    found = info(column)
    if found is None:
        return None
    return SPACES.get(split(column)[1], split(column)[1]) if found.space else "predicted classes"


def bounds(column: str) -> tuple[float, float] | None:
    found = info(column)
    return found.bounds if found else None


def real_values(meta: Mapping[str, Any]) -> dict[str, float]:
    """The real-data value of each column the run.json records: the metrics' real floor (two real sets the metrics
    classifier never saw, at the rows' size; before 0.3: the real training pool vs held-out), and where it has no
    class statistic, that of the real frequencies themselves."""
    metrics = meta.get("metrics") or {}
    out = {k: float(v) for k, v in (metrics.get("real_baseline") or {}).items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if "fid" not in out and isinstance(meta.get("fid_real"), (int, float)):
        out["fid"] = float(meta["fid_real"])
    freq = metrics.get("real_class_frequencies")
    if freq:  # the real pool scored against itself: its entropy, no divergence, the tail at its own share
        out.setdefault("class_entropy", float(-sum(p * math.log(p) for p in freq if p > 0)))
        out.setdefault("tail_ratio", 1.0)
        out.setdefault("class_kl", 0.0)
        out.setdefault("class_js", 0.0)
        out.setdefault("class_kl_real", 0.0)
        out.setdefault("class_tv", 0.0)
        out.setdefault("lost_classes", 0.0)
    return out


def legend(columns: Sequence[str]) -> list[str]:
    """One line per feature space used by `columns`, for the page."""
    suffixes = sorted({split(c)[1] for c in columns if info(c) and info(c).space})
    return [f"{'columns without a suffix' if not s else 'columns ending ' + s}: {SPACES.get(s, s)}" for s in suffixes]
