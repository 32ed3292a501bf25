"""The one table of metric facts: for each metric column, which way is worse, its natural range, whether it lives in a
feature space, and which kinds of change it is meant to see. The metrics, the calibration, the study's verdicts and
the report all read it; adding a metric means one entry here.

Columns are `<metric><suffix>`, the suffix naming the feature space (`` classifier features, `_inception`
Inception-v3, `_pixel` pixels); per-class (`recall_class_3`) and per-family (`fid_vae`) columns read as their metric.

Worse, one rule for every column: HIGHER (larger is worse), LOWER (smaller is worse), or ONE (best at 1: worse is
farther from 1, |v − 1|). A falling tail share is worse (tail_ratio is LOWER).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The ruler's version: bump it whenever a metric's definition changes (what it measures, on which set, how an interval
# is made), so a number recorded under an older ruler is known to be stale (imgcollapse/recorded.py, its test).
# 1-2: kit 0.1-0.2 (copy detectors scaled by unseen real images); 3: kit 0.3 (equal-size sets, bootstrap intervals,
# memorization against a null of the model's own fresh draws, per-class scores independent of the bootstrap count);
# 4: kit 0.4 (fid_mean_within; tail_ratio worse when lower; the calibration's own noise resamples); 5: per-class
# recall and coverage at one fixed size (absent classes apart), the real data's density tails, one ruler trained on
# the balanced pool whatever the arm's long tail.
RULER_VERSION = 5

HIGHER, LOWER, ONE = "higher", "lower", "one"
# the kinds of change the calibration makes (metrics/calibration.py CHANGES names which change is which kind)
KINDS = ("distortion", "homogeneity", "tails", "copying", "contraction")
SPACES = {"_inception": "Inception-v3 features", "_pixel": "pixels", "": "classifier features"}  # suffix -> space
DIVERSITY = ("homogeneity", "tails", "contraction")
# what a population's members are each scored on (`fid_<member>`): the chain scores them, the report draws them
MEMBER_COLUMNS = ("fid", "kid", "precision", "recall", "density", "coverage", "confidence", "class_kl")


@dataclass(frozen=True)
class Fact:
    """What one metric is: which way is worse, its range, whether it is measured in a feature space, what it sees."""

    worse: str | None  # HIGHER, LOWER, ONE; None: a descriptive column with no better or worse
    bounds: tuple[float, float] | None = None  # the natural range of the axis; None: unbounded
    space: bool = True  # measured in a feature space (False: from the classifier's predicted classes)
    meant_for: tuple[str, ...] = ()  # the kinds of change it is meant to see (the calibration checks it does)

    @property
    def better(self) -> str:
        """`↓`, `↑`, `→1` (best at 1) or `` for a page's axis title."""
        return {HIGHER: "↓", LOWER: "↑", ONE: "→1"}.get(self.worse or "", "")


_SET = ("distortion", *DIVERSITY)
FACTS: dict[str, Fact] = {
    "fid": Fact(HIGHER, meant_for=_SET), "fid_mean": Fact(HIGHER, meant_for=_SET),
    "fid_cov": Fact(HIGHER, meant_for=DIVERSITY), "kid": Fact(HIGHER, meant_for=_SET),
    # FID's mean term within each real class, weighted by the real class shares and bias-corrected: a change of class
    # mix alone leaves it at 0 in expectation, so it can speak for distortion where FID cannot
    "fid_mean_within": Fact(HIGHER, meant_for=("distortion", "contraction")),
    "precision": Fact(LOWER, (0, 1), meant_for=("distortion",)),
    "recall": Fact(LOWER, (0, 1), meant_for=DIVERSITY), "coverage": Fact(LOWER, (0, 1), meant_for=DIVERSITY),
    "density": Fact(ONE, meant_for=("distortion",)),  # unbounded above; real data scores about 1
    # < 1: samples closer to their training set than a fresh draw of its source is (copying); smaller is worse
    "memorization_ratio": Fact(LOWER, meant_for=("copying",)),
    "near_copy_share": Fact(HIGHER, (0, 1), meant_for=("copying",)),
    "null_near_copy_share": Fact(None, (0, 1)), "train_distance": Fact(None), "null_distance": Fact(None),
    "confidence": Fact(LOWER, (0, 1), space=False, meant_for=("distortion",)),
    "confident_share": Fact(LOWER, (0, 1), space=False, meant_for=("distortion",)),
    "class_js": Fact(HIGHER, (0, 1), space=False, meant_for=("homogeneity", "tails")),
    "class_kl": Fact(HIGHER, space=False, meant_for=("homogeneity", "tails")),
    "class_kl_real": Fact(HIGHER, space=False, meant_for=("homogeneity", "tails")),
    "class_tv": Fact(HIGHER, (0, 1), space=False, meant_for=("homogeneity", "tails")),
    "class_entropy": Fact(LOWER, space=False, meant_for=("homogeneity", "tails")),
    "tail_ratio": Fact(LOWER, space=False, meant_for=("homogeneity", "tails")),  # the tail's share of its real share
    "lost_classes": Fact(HIGHER, space=False, meant_for=("homogeneity",)),
    # each class at one fixed size, so within-class diversity: blind by design to how many samples a class gets
    "recall_tail": Fact(LOWER, (0, 1), meant_for=("homogeneity", "contraction")),
    "coverage_tail": Fact(LOWER, (0, 1), meant_for=("homogeneity", "contraction")),
    "recall_head": Fact(LOWER, (0, 1), meant_for=("homogeneity", "contraction")),
    "coverage_head": Fact(LOWER, (0, 1), meant_for=("homogeneity", "contraction")),
    # the share of the group's classes with too few samples to be scored at that size
    "absent_tail": Fact(HIGHER, (0, 1), space=False, meant_for=("tails",)),
    "absent_head": Fact(HIGHER, (0, 1), space=False, meant_for=("homogeneity",)),
    # the held-out images in the real data's lowest- and highest-density 10% that some sample's nearest ball holds
    "coverage_low_density": Fact(LOWER, (0, 1), meant_for=("tails", "contraction")),
    "coverage_high_density": Fact(LOWER, (0, 1), meant_for=("contraction",)),
}


def split(column: str) -> tuple[str, str]:
    """(metric, feature-space suffix) of a column: `fid_inception` -> (`fid`, `_inception`)."""
    for suffix in sorted(SPACES, key=len, reverse=True):
        if suffix and column.endswith(suffix) and column[: -len(suffix)] in FACTS:
            return column[: -len(suffix)], suffix
    return column, ""


def fact(column: str) -> Fact | None:
    """The facts of a column (its metric's, whatever its space), per-class and per-family columns included; None for
    a score's bookkeeping columns (`_sd`, `_lo`, `_hi`), which have no better or worse."""
    if column.endswith(("_sd", "_lo", "_hi")):
        return None
    base = split(column)[0]
    for name in (base, base.split("_class_")[0], base.rsplit("_", 1)[0]):
        if name in FACTS:
            return FACTS[name]
    return None


def worse(column: str) -> str | None:
    """HIGHER, LOWER or ONE for a column the kit knows; None otherwise."""
    found = fact(column)
    return found.worse if found else None


def badness(column: str, value: float) -> float:
    """A value on the scale where larger is worse: v (HIGHER), −v (LOWER), |v − 1| (ONE)."""
    way = worse(column)
    if way == HIGHER:
        return value
    if way == LOWER:
        return -value
    if way == ONE:
        return abs(value - 1.0)
    raise KeyError(f"which way is worse is not known for {column!r} (imgcollapse/metric_facts.py FACTS)")


def check_table(facts: Mapping[str, Fact] = FACTS) -> None:
    """Every entry's direction and kinds are among the allowed ones (a test calls it)."""
    for name, entry in facts.items():
        if entry.worse not in (HIGHER, LOWER, ONE, None):
            raise ValueError(f"{name}: worse {entry.worse!r} is not one of {HIGHER}, {LOWER}, {ONE}, None")
        if unknown := set(entry.meant_for) - set(KINDS):
            raise ValueError(f"{name}: kinds {sorted(unknown)} are not among {KINDS}")
