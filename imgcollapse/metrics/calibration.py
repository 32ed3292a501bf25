"""Which metric sees which change, on this dataset and feature space: graded, controlled changes applied to real
images no model or classifier trained on (the floor split), each scored like a generation.

Changes (each at five strengths, and none):
  distortion   blur (Gaussian, σ in pixels), noise (pixel noise sd, grey levels), contrast (share of contrast lost)
  homogeneity  drop_classes (the rarest classes removed, their share given to the rest)
  tails        skew (class shares tilted by a Zipf exponent: the head gains, the tail loses)
  copying      duplicate (a share of the images replaced by exact copies of training images)
  contraction  contract (each image moved toward its class mean by a share t)
For every metric the response curve is recorded with its noise at zero change (its bootstrap standard error), and
a verdict: "sees it" when the metric moves monotonically (Spearman ρ ≥ 0.8 over the strengths) in the direction
that means worse, ending more than 2 sd beyond zero change; "moves the other way" when it does so in the opposite
direction; else "blind". Nothing here is hand-tuned per metric: the rule is the same for every one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from scipy.stats import spearmanr

from imgcollapse.data import ImageSet, Splits
from imgcollapse.data.transforms import floor_of, floor_split
from imgcollapse.metric_facts import badness, split, worse
from imgcollapse.metrics.columns import CLASS_COLUMNS, SET_COLUMNS, SUFFIX, interval_columns
from imgcollapse.metrics.evaluation import evaluate, without
from imgcollapse.metrics.scores import tail_classes
from imgcollapse.metrics.spaces import Metrics
from imgcollapse.store import atomic_write

log = logging.getLogger(__name__)

CALIBRATION_VERSION = 5  # bump when changes, strengths, the verdict rule or the scores change: invalidates cached
# calibrations (2: per-class scores no longer depend on the bootstrap count; 3: its own noise resamples, the facts'
# directions, fid_mean_within, "not checked"; 4: the noise from the interval's unclipped side; 5: per-class scores at
# one fixed size, absent classes, the real data's density tails)
FILE = "calibration.json"
FIGURE = "calibration.png"
# change -> (what it stands for, strengths after "none", what a strength means)
CHANGES: dict[str, tuple[str, tuple[float, ...], str]] = {
    "blur": ("distortion", (0.3, 0.5, 0.7, 1.0, 1.5), "Gaussian σ in pixels (at 8×8; scaled with image size)"),
    "noise": ("distortion", (4.0, 8.0, 16.0, 32.0, 64.0), "pixel noise sd in grey levels"),
    "contrast": ("distortion", (0.1, 0.2, 0.3, 0.5, 0.7), "share of contrast lost"),
    "drop_classes": ("homogeneity", (0.1, 0.2, 0.3, 0.4, 0.5), "share of classes removed, rarest first"),
    "skew": ("tails", (0.25, 0.5, 1.0, 1.5, 2.0), "Zipf exponent tilting the class shares"),
    "duplicate": ("copying", (0.05, 0.1, 0.2, 0.3, 0.5), "share of images replaced by copies of training images"),
    "contract": ("contraction", (0.1, 0.2, 0.3, 0.5, 0.7), "share of the way to the class mean"),
}
CLASS_CHANGES = ("drop_classes", "skew", "contract")  # need labels
NOISE_RESAMPLES = 30  # the zero-change noise always comes from this many bootstrap resamples of its own, whatever
# metrics.bootstrap is (a study runs with 0): the "beyond 2 sd" rule keeps its meaning (30: an sd to ~13%)
SEES, OPPOSITE, BLIND, NOT_CHECKED = "sees it", "moves the other way", "blind", "not checked"


def calibrated_columns(metrics: Metrics) -> list[str]:
    """The columns the calibration reports: every space's set scores and memorization, pixel memorization, and the
    classifier's class statistics."""
    columns = []
    for space in metrics.spaces:
        columns += [c + space.suffix for c in (*SET_COLUMNS, "near_copy_share", "memorization_ratio")]
        if space.name == "classifier":
            columns += [c for c in CLASS_COLUMNS if worse(c) is not None]
    return columns + [c + SUFFIX["pixel"] for c in ("near_copy_share", "memorization_ratio")]


# Changes ---------------------------------------------------------------------------------------------
def _class_draw(base: ImageSet, shares: np.ndarray, n: int, rng: np.random.Generator) -> ImageSet:
    """`n` images drawn with replacement, class k with probability shares[k], uniformly within a class."""
    labels = base.labels.numpy()
    classes = rng.choice(len(shares), n, p=shares / shares.sum())
    index = [rng.choice(np.flatnonzero(labels == k)) for k in classes]
    return base.subset(np.array(index))


def apply_change(change: str, strength: float, base: ImageSet, train: ImageSet, real_freq: np.ndarray | None,
                 seed: int) -> ImageSet:
    """`base` under one change at one strength (0: none). Class changes redraw `base` with replacement (their zero
    is a redraw too, so duplicates do not masquerade as a response)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, list(CHANGES).index(change), int(strength * 1000)]))
    x = base.images.float()
    if change in ("drop_classes", "skew"):
        freq = real_freq if real_freq is not None else np.full(base.num_classes, 1 / base.num_classes)
        rank = np.argsort(np.argsort(-freq, kind="stable"), kind="stable")  # 0: the most frequent class
        if change == "drop_classes":
            shares = freq.copy()
            dropped = tail_classes(freq, strength) if strength else np.array([], dtype=int)
            shares[dropped] = 0
        else:
            shares = freq * (rank + 1.0) ** -strength
        return _class_draw(base, shares, len(base), rng)
    if strength == 0:
        return base
    if change == "blur":
        sigma = strength * base.images.shape[-1] / 8
        size = 2 * math.ceil(3 * sigma) + 1
        x = TF.gaussian_blur(x, [size, size], [sigma, sigma])
    elif change == "noise":
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        x = x + strength * torch.randn(x.shape, generator=g)
    elif change == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + (1 - strength) * (x - mean)
    elif change == "contract":
        labels = base.labels
        means = torch.stack([x[labels == k].mean(0) if (labels == k).any() else torch.zeros_like(x[0])
                             for k in range(base.num_classes)])
        x = (1 - strength) * x + strength * means[labels]
    elif change == "duplicate":
        count = round(strength * len(base))
        where = rng.choice(len(base), count, replace=False)
        # a pool cut smaller than the floor (dataset.pool_size) repeats its images rather than fail
        copies = train.images[torch.from_numpy(rng.choice(len(train), count, replace=count > len(train)))]
        images = base.images.clone()
        images[torch.from_numpy(where)] = copies
        return ImageSet(images, base.labels, base.class_names)
    else:
        raise ValueError(f"unknown change {change!r}; one of {list(CHANGES)}")
    return ImageSet(x.round().clamp(0, 255).to(torch.uint8), base.labels, base.class_names)


# Verdicts --------------------------------------------------------------------------------------------
def verdict(values: list[float], noise_sd: float, column: str) -> str:
    """SEES when the response is monotone (Spearman ρ ≥ 0.8) toward worse (metric_facts: larger, smaller, or farther
    from 1) and ends > 2 sd of the zero-change noise beyond zero change; OPPOSITE when it is so the other way; BLIND
    otherwise; NOT_CHECKED when the metric or its noise could not be computed (never read as a noise of 0)."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all() or not np.isfinite(noise_sd):
        return NOT_CHECKED
    if np.ptp(v) == 0:
        return BLIND
    response = np.array([badness(column, x) for x in v]) - badness(column, v[0])
    rho = spearmanr(np.arange(len(v)), response).statistic
    beyond = 2 * noise_sd
    if rho >= 0.8 and response[-1] > beyond:
        return SEES
    if rho <= -0.8 and -response[-1] > beyond:
        return OPPOSITE
    return BLIND


def response(entry: dict[str, Any], column: str) -> float:
    """How far a change moved a column toward worse at its largest strength (NaN where it could not be scored)."""
    v = entry["values"]
    if not v or not (np.isfinite(v[0]) and np.isfinite(v[-1])):
        return float("nan")
    return float(badness(column, v[-1]) - badness(column, v[0]))


def severity_ruler(column: str) -> str:
    """The generic ruler a column's responses are matched against: FID in the column's feature space."""
    suffix = split(column)[1]
    return "fid" + (suffix if suffix != SUFFIX["pixel"] else "")


def specific(result: dict[str, Any], column: str, wanted: set[str]) -> tuple[bool | None, str]:
    """Whether `column` may speak for the changes `wanted` (change names or kinds): it sees one of them and, at matched
    severity (its response per unit of the FID change each change causes, at the largest strength), responds more
    to one of them than to any change of another kind it sees. None: the calibration made no such change. FID itself
    is never specific. The second item says why."""
    changes = result.get("changes", {})
    inside = {n for n, e in changes.items() if n in wanted or e.get("kind") in wanted}
    if not inside:
        return None, f"the calibration made no {'/'.join(sorted(wanted))} change here: not checked"
    ruler = severity_ruler(column)
    per_unit: dict[str, float] = {}
    for name, entry in changes.items():
        metrics = entry.get("metrics", {})
        if column not in metrics or metrics[column].get("verdict") != SEES:
            continue
        scale = response(metrics[ruler], ruler) if ruler in metrics else float("nan")
        per_unit[name] = response(metrics[column], column) / scale if scale > 0 else float("inf")
    seen = sorted(n for n in inside if n in per_unit)
    if not seen:
        unchecked = sorted(n for n in inside if changes[n].get("metrics", {}).get(column, {}).get("verdict")
                           == NOT_CHECKED)
        if unchecked:
            return False, f"not checked on {', '.join(unchecked)} (no noise estimate): no vote"
        return False, f"blind to {', '.join(sorted(inside))} here"
    best = max(seen, key=per_unit.get)
    outside = {n: v for n, v in per_unit.items() if n not in inside}
    rival = max(outside, key=outside.get) if outside else None
    if rival is not None and not per_unit[best] > outside[rival]:
        return False, f"sees {', '.join(seen)} but responds as much to {rival} (per unit of {ruler}: " \
                      f"{outside[rival]:.3g} vs {per_unit[best]:.3g}): not specific"
    return True, f"sees {', '.join(seen)}" + (f", more than {rival} per unit of {ruler}" if rival else
                                               ", nothing else")


def _noise(row: dict[str, Any], column: str) -> float:
    """A column's standard error at zero change, from its bootstrap interval: value ± 1.96 se, held to the column's
    range, so the side that was not clipped keeps the half-width (a score near 0 or 1 is clipped on one side)."""
    lo, hi, value = (row.get(c) for c in (*interval_columns(column), column))
    if lo is None or hi is None or value is None or not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(value)):
        return float("nan")
    return max(hi - value, value - lo) / 1.96


# Running ---------------------------------------------------------------------------------------------
def calibration_key(splits: Splits, metrics: Metrics) -> str:
    """Cache key: the data, every extractor's fingerprint, the scoring settings and the calibration's version (not
    metrics.bootstrap: the calibration draws its own resamples)."""
    settings = dataclasses.asdict(metrics.config)
    key = {"data": splits.fingerprint(), "extractors": [s.memo.extractor.fingerprint for s in metrics.spaces],
           "names": [s.name for s in metrics.spaces], "size": metrics.size, "seed": metrics.seed,
           "version": CALIBRATION_VERSION,
           **{k: settings[k] for k in ("nearest_k", "subsets", "near_copy_ratio", "tail_fraction", "class_size",
                                       "density_fraction", "lost_threshold", "kid_subsets", "kid_subset_size")}}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def calibrate(splits: Splits, metrics: Metrics) -> dict[str, Any]:
    """Score every change at every strength on the floor split against the held-out split; the response curves,
    their noise at zero change and a verdict per (metric, change)."""
    began = time.perf_counter()
    floor = floor_of(splits.train, splits.heldout, splits.floor)
    if len(floor) > metrics.size:  # the rows' size: a seeded, class-stratified subset (not the first images)
        floor = floor_split(floor, metrics.size, 0) if len(floor) >= 2 * metrics.size else \
            floor.subset(np.sort(np.random.default_rng(0).choice(len(floor), metrics.size, replace=False)))
    train = without(splits.train, floor)  # memorization's training set: it must not hold the floor's images
    labelled = floor.labels is not None and floor.num_classes is not None
    changes = [c for c in CHANGES if labelled or c not in CLASS_CHANGES]
    columns = calibrated_columns(metrics)
    # past zero change only the response matters, not its interval; 3 equal-size subsets per class, not 10
    quick = dataclasses.replace(metrics, config=dataclasses.replace(metrics.config, bootstrap=0, subsets=3))
    noisy = dataclasses.replace(metrics, config=dataclasses.replace(metrics.config, bootstrap=NOISE_RESAMPLES))
    result: dict[str, Any] = {"version": CALIBRATION_VERSION, "size": len(floor), "num_train": len(train),
                              "spaces": [s.name for s in metrics.spaces], "changes": {}}
    zero_rows: dict[str, dict[str, Any]] = {}
    for change in changes:
        kind, strengths, meaning = CHANGES[change]
        family = "class" if change in ("drop_classes", "skew") else "pixel"
        curves: dict[str, list[float]] = {c: [] for c in columns}
        for strength in (0.0, *strengths):
            changed = apply_change(change, strength, floor, train, metrics.real_freq, metrics.seed)
            if strength == 0 and family not in zero_rows:  # the noise at zero change: one bootstrap per family
                zero_rows[family] = evaluate(changed, train, noisy, null=splits.heldout).row
                row = zero_rows[family]
            else:
                row = zero_rows[family] if strength == 0 else evaluate(changed, train, quick, null=splits.heldout).row
            for c in columns:
                value = row.get(c)
                curves[c].append(float(value) if value is not None else float("nan"))
        metrics_out = {}
        for c in columns:
            sd = _noise(zero_rows[family], c)
            metrics_out[c] = {"values": curves[c], "noise_sd": sd, "worse": worse(c),
                              "verdict": verdict(curves[c], sd, c)}
        result["changes"][change] = {"kind": kind, "strengths": [0.0, *strengths], "meaning": meaning,
                                     "metrics": metrics_out}
    result["sees"] = {c: [ch for ch in changes if result["changes"][ch]["metrics"][c]["verdict"] == SEES]
                      for c in columns}
    result["seconds"] = round(time.perf_counter() - began, 2)
    log.info("calibration: %d changes x 6 strengths on %d real images in %.1f s", len(changes), len(floor),
             result["seconds"])
    return result


def load_or_calibrate(splits: Splits, metrics: Metrics, cache_dir: Path) -> dict[str, Any]:
    """The cached calibration of this dataset, feature spaces and scoring, computed (and cached) if absent."""
    key = calibration_key(splits, metrics)
    path = Path(cache_dir) / "calibration" / f"{key}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:  # a cache is rebuilt, never trusted when damaged
            log.warning("cached calibration %s cannot be read (%s); computing it again", path, e)
    log.info("calibrating the metrics on this dataset (once; cached at %s)", path)
    result = {"key": key, **calibrate(splits, metrics)}
    write_json(path, result)
    return result


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write a calibration atomically (never a half-written file a later run would trust)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(result, indent=1, allow_nan=True)))


def sees_summary(result: dict[str, Any]) -> dict[str, str]:
    """Column -> the changes it sees, as short text for a report table ("—": none)."""
    return {c: ", ".join(changes) if changes else "—" for c, changes in result.get("sees", {}).items()}
