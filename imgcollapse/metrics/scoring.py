"""One set's scores in one feature space, each with its ruler: set scores at the equal size (averaged over seeded
subsets, with their spread), class scores from the classifier's predictions, memorization against a null; every
score with its bootstrap interval."""

from __future__ import annotations

import numpy as np

from imgcollapse.metrics.columns import SET_COLUMNS, interval_columns, suffixed
from imgcollapse.metrics.config import MetricsConfig
from imgcollapse.metrics.resampling import equal_subsets, interval, paired, stream, summarise
from imgcollapse.metrics.scores import (
    MEMORIZATION,
    ball_coverage,
    class_statistics,
    confidence,
    frechet_terms,
    kid,
    mean_cov,
    memorization,
    prdc,
    prdc_draws,
    sqrt_psd,
    tail_classes,
    within_class_mean_term,
)
from imgcollapse.metrics.spaces import Metrics, Space


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
    # the real data's tails: against the whole held-out split's coverage balls, fixed before any generation
    row["coverage_low_density"] = ball_coverage(features, space.reference.features[space.low_density],
                                                space.radii[space.low_density])
    row["coverage_high_density"] = ball_coverage(features, space.reference.features[space.high_density],
                                                 space.radii[space.high_density])
    return row


def set_scores(features: np.ndarray, space: Space, metrics: Metrics) -> dict[str, float]:
    """FID (and its two terms), KID, precision/recall/density/coverage of `features` against the held-out
    reference at the equal size: averaged over seeded subsets, with their spread and bootstrap intervals."""
    config, ref = metrics.config, space.reference.features
    size = min(metrics.size, len(features))
    rng = stream(metrics.seed, 1)
    draws = equal_subsets(len(features), size, config.subsets, rng)
    ref_draws = equal_subsets(len(ref), size, config.subsets, rng)  # fewer samples than held-out: the reference
    # is the one subsampled, `subsets` times
    full_ref = len(ref_draws[0]) == len(ref)
    # draw by draw: shared distances (per_class_scores) compute a 1,400-sample matrix that ten draws of 400 do not
    # need, and measured no faster here (0.19 s a generation either way on the digits)
    per_draw = [_set_draw(features[i], ref[r], space, config, full_ref, metrics.seed)
                for i, r in paired(draws, ref_draws)]
    replicates = [_set_draw(features[rng.integers(0, len(features), size)], ref[ref_draws[0]], space, config,
                            full_ref, metrics.seed) for _ in range(config.bootstrap)]
    return summarise(per_draw, replicates, SET_COLUMNS, sd=True)


def per_class_scores(features: np.ndarray, predicted: np.ndarray, space: Space, metrics: Metrics,
                     names: list[str], tail: np.ndarray) -> dict[str, float]:
    """Recall and coverage of each class at one fixed size: `metrics.class_size` of its held-out images (all, if it
    has fewer) against as many of the samples the classifier assigns to it, at prdc's k, so a class's score never
    depends on how many samples it gets; a class with fewer samples than that is absent (NaN, counted in
    absent_tail / absent_head). recall_tail, ...: the means over the group's present classes."""
    config, ref, labels = metrics.config, space.reference.features, metrics.heldout_labels
    rng = stream(metrics.seed, 2)
    boot_rng = stream(metrics.seed, 5)  # its own stream: the values never depend on how many resamples follow them
    row: dict[str, float] = {}
    boots: dict[int, list[dict[str, float]]] = {}
    sizes = np.zeros(len(names), dtype=int)
    for c, name in enumerate(names):
        real, mine = ref[labels == c], features[predicted == c]
        sizes[c] = size = min(config.class_size, len(real))  # fixed by the real data alone
        if len(mine) < size or size < config.nearest_k + 2:  # absent (or a real class too small to score)
            draws = [{"recall": float("nan"), "coverage": float("nan")}]
            boots[c] = draws * config.bootstrap
        else:
            subs, ref_subs = (equal_subsets(len(mine), size, config.subsets, rng),
                              equal_subsets(len(real), size, config.subsets, rng))
            draws = prdc_draws(mine, real, paired(subs, ref_subs), config.nearest_k)
            boots[c] = [prdc(mine[boot_rng.integers(0, len(mine), size)], real[ref_subs[0]], config.nearest_k)
                        for _ in range(config.bootstrap)]
        summary = summarise(draws, boots[c], ("recall", "coverage"), sd=False)
        row.update({key.replace("recall", f"recall_class_{name}", 1).replace("coverage", f"coverage_class_{name}", 1):
                    v for key, v in summary.items()})
    head = np.setdiff1d(np.arange(len(names)), tail)
    counts = np.bincount(predicted, minlength=len(names))[: len(names)]
    absent_boot = [np.bincount(predicted[boot_rng.integers(0, len(predicted), len(predicted))],
                               minlength=len(names))[: len(names)] < sizes for _ in range(config.bootstrap)]
    for group, classes in (("tail", tail), ("head", head)):
        for score in ("recall", "coverage"):
            column = f"{score}_{group}"
            value = _nanmean([row[f"{score}_class_{names[c]}"] for c in classes])
            boot = np.array([_nanmean([boots[c][b][score] for c in classes]) for b in range(config.bootstrap)])
            row[column] = float(value)
            row.update(zip(interval_columns(column), interval(float(value), boot, column), strict=True))
        column = f"absent_{group}"
        row[column] = float((counts[classes] < sizes[classes]).mean())
        boot = np.array([absent[classes].mean() for absent in absent_boot], dtype=np.float64)
        row.update(zip(interval_columns(column), interval(row[column], boot, column), strict=True))
    return row


def _nanmean(values: list[float]) -> float:
    """Mean of the finite values (NaN when none is): an absent class leaves the group mean to the rest."""
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
    rng = stream(metrics.seed, 3)
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
    rng = stream(metrics.seed, 4)
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
    return suffixed(row, suffix)
