"""The statistics behind a verdict, on arrays so that one code path serves a study (one draw) and the simulation of
tens of thousands of null studies (tests/test_verdicts.py): paired differences across seeds, one-sided bounds at the
levels error control assigns, t and exact sign-flip p-values, and the smallest effect the design could detect.

Every function takes `d` of shape (..., n): the last axis is the seeds, every value finite; `interaction` and
`deceleration` make such a `d` from the chains' own numbers (a crossed design's four chains, one chain's curve).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def describe(d: np.ndarray, level_supported: float | np.ndarray, level_contradicted: float | np.ndarray
             ) -> dict[str, np.ndarray]:
    """mean, sd, n; `lo`: the lower one-sided (1 − level_supported) t-bound of the mean, `hi`: the upper one-sided
    (1 − level_contradicted) bound (so `lo > 0` is the one-sided t-test in the claim's direction at level_supported,
    `hi < 0` the opposite one at level_contradicted); `lo95`, `hi95`: the plain two-sided 95% interval; `p`: the
    two-sided p, `p_claim` and `p_against` the one-sided ones. Zero spread has no interval (NaN bounds) and its p
    from the exact sign-flip test (2^-n at best, never 0); one seed has neither."""
    d = np.asarray(d, dtype=np.float64)
    n = d.shape[-1]
    mean = d.mean(-1)
    shape = mean.shape
    nan = np.full(shape, np.nan)
    if n < 2:
        return {"n": np.full(shape, n), "mean": mean, "sd": nan, "lo": nan, "hi": nan, "lo95": nan, "hi95": nan,
                "p": nan, "p_claim": nan, "p_against": nan, **sign_test(d)}
    sd = d.std(-1, ddof=1)
    se = sd / math.sqrt(n)
    flat = sd <= 1e-12 * np.maximum(1.0, np.abs(mean))  # all seeds agree: no spread to scale a t by
    safe_se = np.where(flat, 1.0, se)
    t = np.where(flat, np.nan, mean / safe_se)
    q95 = stats.t.ppf(0.975, n - 1)
    q_s = stats.t.ppf(1 - np.asarray(level_supported, dtype=np.float64), n - 1)
    q_c = stats.t.ppf(1 - np.asarray(level_contradicted, dtype=np.float64), n - 1)
    lo = np.where(flat, np.nan, mean - q_s * se)
    hi = np.where(flat, np.nan, mean + q_c * se)
    p_claim = np.where(flat, np.where(mean > 0, 0.5 ** n, 1.0), stats.t.sf(np.nan_to_num(t), n - 1))
    p_against = np.where(flat, np.where(mean < 0, 0.5 ** n, 1.0), stats.t.cdf(np.nan_to_num(t), n - 1))
    p = np.minimum(1.0, 2 * np.minimum(p_claim, p_against))
    return {"n": np.full(shape, n), "mean": mean, "sd": sd, "lo": lo, "hi": hi,
            "lo95": np.where(flat, np.nan, mean - q95 * se), "hi95": np.where(flat, np.nan, mean + q95 * se),
            "p": p, "p_claim": p_claim, "p_against": p_against, **sign_test(d)}


def sign_test(d: np.ndarray) -> dict[str, np.ndarray]:
    """The exact sign test, free of any assumption on the differences' distribution (it tests their median): the
    one-sided `p_sign_claim` that d > 0 in more seeds than chance, `p_sign_against` the reverse (zeros dropped). Its
    floor is 2^-n: 0.125 at 3 seeds, so below 6 seeds it can never reach 2.5%."""
    positive, negative = (d > 0).sum(-1), (d < 0).sum(-1)
    nonzero = positive + negative
    return {"p_sign_claim": np.where(nonzero > 0, stats.binom.sf(positive - 1, nonzero, 0.5), 1.0),
            "p_sign_against": np.where(nonzero > 0, stats.binom.sf(negative - 1, nonzero, 0.5), 1.0)}


def detectable(sd: float | None, n: int, level: float, power: float = 0.8) -> float | None:
    """The smallest true mean difference the one-sided t-test at `level` finds with probability `power`, at spread
    `sd` and n seeds (the noncentral t, solved exactly); None without a spread to go on."""
    if sd is None or not np.isfinite(sd) or sd <= 0 or n < 2 or not 0 < level < 1:
        return None
    from scipy.optimize import brentq

    crit = stats.t.ppf(1 - level, n - 1)

    def short(delta: float) -> float:
        return stats.nct.sf(crit, n - 1, delta * math.sqrt(n) / sd) - power

    upper = sd
    while short(upper) < 0:
        upper *= 2
    return float(brentq(short, 0.0, upper, xtol=sd * 1e-6))


def split_levels(level_supported: float, level_contradicted: float, parts: int, how: str) -> tuple[float, float]:
    """The levels each of `parts` voting parts is tested at so that their `how` combination keeps the whole's
    (Bonferroni on every side where one part suffices): `or` (supported if any part is) on the supported side;
    `and` (supported only if every part is, an intersection-union test) on the contradicted side; `any` (one family:
    some part decides, none against) on both."""
    k = max(1, parts)
    if how == "or":
        return level_supported / k, level_contradicted
    if how == "any":
        return level_supported / k, level_contradicted / k
    return level_supported, level_contradicted / k


def combine(supported: np.ndarray, contradicted: np.ndarray, votes: np.ndarray, how: str,
            conflict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(supported, contradicted) of a whole from its parts' (last axis). `and`: supported if every part votes and is
    supported, contradicted if any voting part is. `or`: the dual (supported if any voting part is, contradicted if
    every part votes and is). `any` (one family): some voting part decides and none points the other way.
    `conflict`: parts that point both ways leave the whole undecided."""
    supported, contradicted = supported & votes, contradicted & votes
    any_vote = votes.any(-1)
    if how == "and":
        sup = (supported | ~votes).all(-1) & votes.all(-1)
        con = contradicted.any(-1)
    elif how == "or":
        sup = supported.any(-1)
        con = contradicted.all(-1) & votes.all(-1)  # the dual of and: a part that cannot vote leaves it open
    else:
        sup, con = supported.any(-1), contradicted.any(-1)
        conflict = True
    if conflict:
        both = supported.any(-1) & contradicted.any(-1)
        sup, con = sup & ~both, con & ~both
    sup, con = sup & any_vote, con & any_vote
    return sup & ~con, con & ~sup


def interaction(via: np.ndarray, own: np.ndarray, mirror_via: np.ndarray, mirror_own: np.ndarray,
                scale: float | np.ndarray = 1.0) -> np.ndarray:
    """A crossed design's d per seed: ½[(Δ A via B − Δ A own) + (Δ B via A − Δ B own)] / scale, each Δ a chain's change
    since its generation 0 at a generation its home family trained. A family that is worse (or better) whoever it
    learns from adds the same to one cross chain as it takes from the other, so it cancels; what is left is the
    interaction, source × learner. One `scale` for both halves keeps that cancellation (a scale per family would not:
    docs/STUDIES.md "Crossed design")."""
    return 0.5 * ((np.asarray(via) - own) + (np.asarray(mirror_via) - mirror_own)) / scale


def deceleration(curve: np.ndarray) -> np.ndarray:
    """d per seed from a curve of excess error e_0..e_G (last axis the generations): the first step's increment less
    the last one's, (e_1 − e_0) − (e_G − e_{G−1}). 0 in expectation for linear growth, > 0 where growth slows (a
    bounded curve), < 0 where it speeds up. A real floor subtracted from every e cancels: only steps enter."""
    curve = np.asarray(curve, dtype=np.float64)
    if curve.shape[-1] < 3:
        raise ValueError(f"deceleration needs generations 0..G with G >= 2 (got {curve.shape[-1]} generations)")
    return (curve[..., 1] - curve[..., 0]) - (curve[..., -1] - curve[..., -2])


def power_law(sizes: np.ndarray, excess: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exponent b, amplitude a) of excess ≈ a·size^-b, the least-squares line through (log size, log excess) (last
    axis the sizes). A curve with an excess <= 0 or not finite has no fit: NaN."""
    x = np.log(np.asarray(sizes, dtype=np.float64))
    e = np.asarray(excess, dtype=np.float64)
    if x.shape[-1] < 2 or len(set(x.tolist())) < 2:
        raise ValueError(f"a power law needs >= 2 different sizes (got {np.exp(x).tolist()})")
    ok = np.all(np.isfinite(e) & (e > 0), axis=-1)
    y = np.log(np.where(e > 0, e, 1.0))
    xc = x - x.mean()
    slope = (y * xc).sum(-1) / (xc**2).sum()
    intercept = y.mean(-1) - slope * x.mean()
    return np.where(ok, -slope, np.nan), np.where(ok, np.exp(intercept), np.nan)
