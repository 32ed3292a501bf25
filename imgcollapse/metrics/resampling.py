"""Seeded resampling behind every score's ruler: equal-size subsets paired with the reference's, and bootstrap
intervals (value ± 1.96 standard errors) held to each column's range."""

from __future__ import annotations

import numpy as np

from imgcollapse.metrics.columns import BOUNDED, UNSIGNED, interval_columns


def stream(seed: int, *tags: int) -> np.random.Generator:
    """An independent stream per (seed, tags): each score draws from its own, whatever the others draw."""
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


def summarise(per_draw: list[dict[str, float]], replicates: list[dict[str, float]], columns: tuple[str, ...],
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
