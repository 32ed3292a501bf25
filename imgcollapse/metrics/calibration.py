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
from imgcollapse.data.transforms import floor_split
from imgcollapse.metrics import (
    CLASS_COLUMNS,
    SET_COLUMNS,
    SUFFIX,
    Metrics,
    evaluate,
    interval_columns,
    tail_classes,
    without,
)
from imgcollapse.store import atomic_write

log = logging.getLogger(__name__)

CALIBRATION_VERSION = 2  # bump when changes, strengths, the verdict rule or the scores change: invalidates cached
# calibrations (2: per-class scores no longer depend on the bootstrap count)
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
# +1: larger is worse; -1: smaller is worse
WORSE = {"fid": 1, "fid_mean": 1, "fid_cov": 1, "kid": 1, "precision": -1, "recall": -1, "density": -1,
         "coverage": -1, "near_copy_share": 1, "memorization_ratio": -1, "confidence": -1, "class_js": 1,
         "class_kl": 1, "class_kl_real": 1, "class_tv": 1, "class_entropy": -1, "tail_ratio": -1, "lost_classes": 1,
         "recall_tail": -1, "coverage_tail": -1, "recall_head": -1, "coverage_head": -1}
SEES, OPPOSITE, BLIND = "sees it", "moves the other way", "blind"


def calibrated_columns(metrics: Metrics) -> list[str]:
    """The columns the calibration reports: every space's set scores and memorization, pixel memorization, and the
    classifier's class statistics."""
    columns = []
    for space in metrics.spaces:
        columns += [c + space.suffix for c in (*SET_COLUMNS, "near_copy_share", "memorization_ratio")]
        if space.name == "classifier":
            columns += [c for c in CLASS_COLUMNS if c in WORSE]
    return columns + [c + SUFFIX["pixel"] for c in ("near_copy_share", "memorization_ratio")]


def base_name(column: str) -> str:
    """`fid_inception` -> `fid`: the metric a column measures, whatever its space."""
    for suffix in (SUFFIX["inception"], SUFFIX["pixel"]):
        if column.endswith(suffix):
            return column[: -len(suffix)]
    return column


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
        copies = train.images[torch.from_numpy(rng.choice(len(train), count, replace=False))]
        images = base.images.clone()
        images[torch.from_numpy(where)] = copies
        return ImageSet(images, base.labels, base.class_names)
    else:
        raise ValueError(f"unknown change {change!r}; one of {list(CHANGES)}")
    return ImageSet(x.round().clamp(0, 255).to(torch.uint8), base.labels, base.class_names)


# Verdicts --------------------------------------------------------------------------------------------
def verdict(values: list[float], noise_sd: float, worse: int) -> str:
    """SEES when the response is monotone (Spearman ρ ≥ 0.8) toward worse and ends > 2 sd from zero change;
    OPPOSITE when it is so the other way; BLIND otherwise (or when the metric could not be computed)."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all() or np.ptp(v) == 0:
        return BLIND
    response = worse * (v - v[0])
    rho = spearmanr(np.arange(len(v)), response).statistic
    beyond = 2 * (noise_sd if np.isfinite(noise_sd) else 0.0)
    if rho >= 0.8 and response[-1] > beyond:
        return SEES
    if rho <= -0.8 and -response[-1] > beyond:
        return OPPOSITE
    return BLIND


def _noise(row: dict[str, Any], column: str) -> float:
    """A column's standard error at zero change, from its bootstrap interval."""
    lo, hi = (row.get(c) for c in interval_columns(column))
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return float("nan")
    return (hi - lo) / (2 * 1.96)


# Running ---------------------------------------------------------------------------------------------
def calibration_key(splits: Splits, metrics: Metrics) -> str:
    """Cache key: the data, every extractor's fingerprint, the scoring settings and the calibration's version."""
    settings = dataclasses.asdict(metrics.config)
    key = {"data": splits.fingerprint(), "extractors": [s.memo.extractor.fingerprint for s in metrics.spaces],
           "names": [s.name for s in metrics.spaces], "size": metrics.size, "seed": metrics.seed,
           "version": CALIBRATION_VERSION,
           **{k: settings[k] for k in ("nearest_k", "subsets", "bootstrap", "near_copy_ratio", "tail_fraction",
                                       "lost_threshold", "kid_subsets", "kid_subset_size")}}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def calibrate(splits: Splits, metrics: Metrics) -> dict[str, Any]:
    """Score every change at every strength on the floor split against the held-out split; the response curves,
    their noise at zero change and a verdict per (metric, change)."""
    began = time.perf_counter()
    floor = splits.floor if splits.floor is not None else floor_split(splits.train, len(splits.heldout), 0)
    if len(floor) > metrics.size:  # the rows' size: a seeded, class-stratified subset (not the first images)
        floor = floor_split(floor, metrics.size, 0) if len(floor) >= 2 * metrics.size else \
            floor.subset(np.sort(np.random.default_rng(0).choice(len(floor), metrics.size, replace=False)))
    train = without(splits.train, floor)  # memorization's training set: it must not hold the floor's images
    labelled = floor.labels is not None and floor.num_classes is not None
    changes = [c for c in CHANGES if labelled or c not in CLASS_CHANGES]
    columns = calibrated_columns(metrics)
    # past zero change only the response matters, not its interval; 3 equal-size subsets per class, not 10
    quick = dataclasses.replace(metrics, config=dataclasses.replace(metrics.config, bootstrap=0, subsets=3))
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
                zero_rows[family] = evaluate(changed, train, metrics, null=splits.heldout).row
                row = zero_rows[family]
            else:
                row = zero_rows[family] if strength == 0 else evaluate(changed, train, quick, null=splits.heldout).row
            for c in columns:
                value = row.get(c)
                curves[c].append(float(value) if value is not None else float("nan"))
        metrics_out = {}
        for c in columns:
            sd = _noise(zero_rows[family], c)
            worse = WORSE[base_name(c)]
            metrics_out[c] = {"values": curves[c], "noise_sd": sd, "worse": worse,
                              "verdict": verdict(curves[c], sd, worse)}
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
