"""Column names: the suffix that names each feature space, the columns each kind of score writes, the names of
their interval bounds, and the ranges an interval is held to."""

from __future__ import annotations

from imgcollapse.metrics.scores import MEMORIZATION, PRDC

SUFFIX = {"classifier": "", "inception": "_inception", "pixel": "_pixel"}  # column suffix of each feature space
# the real data's own tails: coverage of the held-out images in its lowest- and highest-density decile
DENSITY_COLUMNS = ("coverage_low_density", "coverage_high_density")
SET_COLUMNS = ("fid", "fid_mean", "fid_cov", "kid", *PRDC, *DENSITY_COLUMNS)  # equal-size set comparisons (each with
# `_sd`)
SPACE_COLUMNS = (*SET_COLUMNS, *MEMORIZATION)
PIXEL_COLUMNS = tuple(c + SUFFIX["pixel"] for c in MEMORIZATION)
CLASS_COLUMNS = ("fid_mean_within", "confidence", "confident_share", "class_js", "class_kl", "class_kl_real",
                 "class_tv", "class_entropy", "tail_ratio", "lost_classes", "recall_tail", "coverage_tail",
                 "recall_head", "coverage_head", "absent_tail", "absent_head")
BOUNDED = {"precision", "recall", "coverage", "near_copy_share", "null_near_copy_share", "confidence",
           "confident_share", "class_js", "class_tv", "recall_tail", "coverage_tail", "recall_head", "coverage_head",
           "absent_tail", "absent_head", *DENSITY_COLUMNS}
# (not KID: unbiased, it can dip below 0)
UNSIGNED = {"fid", "fid_mean", "fid_cov", "density", "train_distance", "null_distance", "memorization_ratio",
            "class_kl", "class_kl_real", "class_entropy", "tail_ratio", "lost_classes"}


def interval_columns(column: str) -> tuple[str, str]:
    """The names of a column's 95% interval bounds."""
    return f"{column}_lo", f"{column}_hi"


def empty_columns(name: str) -> list[str]:
    """Every column of an unavailable space (the reason is in run.json)."""
    columns = [c + SUFFIX[name] for c in SPACE_COLUMNS]
    columns += [c + SUFFIX[name] + "_sd" for c in SET_COLUMNS]
    columns += [b for c in SPACE_COLUMNS for b in interval_columns(c + SUFFIX[name])]
    if name == "classifier":
        columns += list(CLASS_COLUMNS) + [b for c in CLASS_COLUMNS for b in interval_columns(c)]
    return columns


def suffixed(row: dict[str, float], suffix: str) -> dict[str, float]:
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
