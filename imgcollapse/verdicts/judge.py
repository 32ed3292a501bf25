"""A study's verdicts from its rows: per test and metric the paired differences across seeds, their statistics at
the levels error control assigns, and per claim one verdict whose error rate is stated.

Error control (docs/STUDIES.md "Error rates"): a claim is one family at level `alpha` (the rule's, default 0.05):
under no effect it reads "supported" at most alpha/2 of the time and "contradicted" at most alpha/2. The claim's
`combine` joins its tests (and: supported only if every test is, contradicted if any is; or: the dual), a test
joins its voting metrics (its rule's `combine`, default or), and each split hands its parts the levels that keep
the whole's (stats.split_levels: Bonferroni on the side where one part suffices). Which metrics vote is fixed by the
calibration, on real images alone, before any generation is looked at.

A test's d per seed is of its kind (rules.TEST_KINDS): a difference of two values, a crossed design's interaction
(stats.interaction), a curve's deceleration (stats.deceleration) or the difference of two scaling curves' power-law
exponents (stats.power_law); a two-sided claim's verdicts read "differs".
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgcollapse.metric_facts import badness
from imgcollapse.verdicts import stats
from imgcollapse.verdicts.rules import (
    CONTRADICTED,
    DIFFERS,
    INCONCLUSIVE,
    SUPPORTED,
    claim_combine,
    controls_level,
    crossed_arms,
    evaluate_rule,
    kind_of,
    lead_arms,
    member_label,
    parse_rule,
    reads,
    rule_of,
    test_generation,
)

log = logging.getLogger(__name__)


def number(value: Any) -> float | None:
    """A finite float, or None (empty cells, text, NaN)."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def series(rows: Sequence[Mapping[str, Any]], arm: str, metric: str) -> dict[int, dict[int, float]]:
    """{seed: {generation: value}} of one arm's metric."""
    out: dict[int, dict[int, float]] = {}
    for row in rows:
        if row["arm"] == arm and (value := number(row.get(metric))) is not None:
            out.setdefault(int(row["seed"]), {})[int(row["generation"])] = value
    return out


def t_interval(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, plain two-sided 95% t-interval and p of per-seed values (descriptive: bands, per-generation tables);
    zero spread and one value have no interval."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if len(x) == 0:
        return {"n": 0, "mean": None, "lo": None, "hi": None, "p": None, "sd": None}
    st = stats.describe(x, 0.025, 0.025)
    return {"n": len(x), "mean": float(st["mean"]), "lo": _opt(st["lo95"]), "hi": _opt(st["hi95"]),
            "p": _opt(st["p"]), "sd": _opt(st["sd"])}


def _opt(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def trust(calibration: Mapping[str, Any] | None, metric: str, trusted_for: Any) -> tuple[bool | None, str]:
    """(whether the calibration lets `metric` speak for the changes `trusted_for` names, why): it must see one and
    respond more to them than to other kinds (metrics.calibration.specific); None: nothing to check (it votes)."""
    if not trusted_for:
        return None, ""
    if not calibration:
        return None, "no calibration.json: not checked"
    if metric not in next(iter(calibration.get("changes", {}).values()), {}).get("metrics", {}):
        return False, f"{metric} is not calibrated"
    from imgcollapse.metrics.calibration import specific

    wanted = {trusted_for} if isinstance(trusted_for, str) else set(trusted_for)
    return specific(calibration, metric, wanted)


def _homes(rows: Sequence[Mapping[str, Any]], arm: str) -> Callable[[int], bool]:
    """Whether the arm's home family (the `family` that trained its generation 0, as its rows record it) trained a
    generation; every generation where the rows name no family."""
    family: dict[int, Any] = {}
    for row in rows:
        if row["arm"] == arm:
            family.setdefault(int(row["generation"]), row.get("family") or None)
    home = family.get(0)
    return lambda g: family.get(g, home) == home


def _differences(rows: Sequence[Mapping[str, Any]], test: Mapping[str, Any], metric: str,
                 generations: Mapping[str, int], first_free: int, model: str | None) -> dict[str, Any]:
    """The per-seed differences d of one metric, oriented so that d > 0 is what the claim says."""
    arm, vs_arm = test["arm"], test.get("vs_arm", test["arm"])
    vs_metric = test.get("vs_metric") or metric
    column = metric
    if test.get("member"):  # the member's own column in the arm's rows (chain.population scores each member)
        label = member_label(test["member"], model)
        column = f"{metric}_{label}" if label else f"{metric}_(member {test['member']}: study model unknown)"
    expect = test["expect"]
    sign = 1 if expect in ("worse", "higher") else -1

    def oriented(name: str) -> Any:
        return (lambda v: badness(name, v)) if expect in ("worse", "better") else (lambda v: v)

    g_a = test_generation(test, generations)
    g_b_fixed = test.get("vs_generation")
    if g_b_fixed == "last":
        g_b_fixed = generations.get(vs_arm, 0)
    a, b = series(rows, arm, column), series(rows, vs_arm, vs_metric)
    fa, fb = oriented(metric), oriented(vs_metric)
    change, relative = bool(test.get("change")), bool(test.get("relative"))

    def diff(seed: int, ga: int, gb: int) -> float | None:
        va, vb = a.get(seed, {}).get(ga), b.get(seed, {}).get(gb)
        if va is None or vb is None:
            return None
        scale = abs(vb)
        va, vb = fa(va), fb(vb)
        if change:
            a0, b0 = a[seed].get(0), b[seed].get(0)
            if a0 is None or b0 is None:
                return None
            va, vb = va - fa(a0), vb - fb(b0)
        d = va - vb
        if relative:
            if not scale:
                return None
            d /= scale
        return sign * d

    def vs_g(g: int) -> int:
        return g_b_fixed if g_b_fixed is not None else g

    home_a, home_b = _homes(rows, arm), _homes(rows, vs_arm)
    # the curve and the separation read only generations both homes trained (an alternation's others compare samplers)
    gens = [g for g in range(1, g_a + 1) if home_a(g) and home_b(vs_g(g))]
    seeds = sorted(set(a) & set(b))
    at_last = [diff(s, g_a, vs_g(g_a)) for s in seeds]
    curve = []
    for s in seeds:  # a seed's curve needs every generation: a chain that stopped early would bias it
        per = [diff(s, g, vs_g(g)) for g in gens]
        curve.append(float(np.mean(per)) if per and None not in per else None)
    start = 1 if g_b_fixed is not None else first_free
    steps = [(g, [diff(s, g, vs_g(g)) for s in seeds]) for g in range(start, g_a + 1)
             if home_a(g) and home_b(vs_g(g))]
    what = column + (f" − {vs_metric}" if vs_metric != column else "")
    if vs_metric != column and vs_arm == arm:
        arms_text = f"{arm} gen {g_a}"
    else:
        arms_text = f"{arm} gen {g_a} vs {vs_arm} gen {vs_g(g_a)}"
    return {"kind": "difference", "arm": arm, "vs_arm": vs_arm, "metric": column, "vs_metric": vs_metric,
            "generation": g_a, "vs_generation": vs_g(g_a), "expect": expect, "sign": sign, "change": change,
            "relative": relative, "seeds": seeds, "per_seed": at_last, "per_seed_curve": curve, "steps": steps,
            "difference": what, "arms_text": arms_text}


def _crossed(rows: Sequence[Mapping[str, Any]], test: Mapping[str, Any], metric: str,
             generations: Mapping[str, int], floors: Mapping[tuple[str, int], Mapping[str, float]]
             ) -> dict[str, Any]:
    """A crossed design's d per seed (stats.interaction) on the metric's badness, at a generation every arm's home
    family trained, in units of the two families' mean generation-0 excess error over the real floor (one scale for
    every seed and both halves: the verdict is the raw-unit test's; 1 where the metric has no floor)."""
    arms = crossed_arms(test)
    g_last = test_generation(test, generations)
    curves = [series(rows, arm, metric) for arm in arms]
    seeds = sorted(set.intersection(*(set(c) for c in curves)))
    homes = [_homes(rows, arm) for arm in arms]

    def delta(k: int, seed: int, g: int) -> float | None:
        v, v0 = curves[k][seed].get(g), curves[k][seed].get(0)
        return None if v is None or v0 is None else badness(metric, v) - badness(metric, v0)

    excess = []  # each family's own loop at generation 0, less the real floor, per seed
    for k in (1, 3):
        for seed in seeds:
            floor, v0 = floors.get((arms[k], seed), {}).get(metric), curves[k][seed].get(0)
            excess.append(None if floor is None or v0 is None else badness(metric, v0) - badness(metric, floor))
    scale, scale_note = 1.0, f"raw units: no real floor for {metric} in the own loops' run.json"
    if excess and None not in excess:
        if float(np.mean(excess)) > 0:
            scale = float(np.mean(excess))
            scale_note = (f"in units of the two families' mean generation-0 excess {metric} over the real floor "
                          f"({scale:.3g})")
        else:
            scale_note = f"raw units: the families' mean generation-0 excess {metric} is not above the real floor"

    def d_at(seed: int, g: int) -> float | None:
        deltas = [delta(k, seed, g) for k in range(4)]
        return None if None in deltas else float(stats.interaction(*deltas, scale=scale))

    gens = [g for g in range(1, g_last + 1) if all(home(g) for home in homes)]
    curve = []
    for s in seeds:
        per = [d_at(s, g) for g in gens]
        curve.append(float(np.mean(per)) if per and None not in per else None)
    via, own, mirror_via, mirror_own = arms
    return {"kind": "crossed", "arm": via, "vs_arm": own, "mirror": {"arm": mirror_via, "vs_arm": mirror_own},
            "metric": metric, "vs_metric": metric, "generation": g_last, "vs_generation": g_last, "expect": "worse",
            "sign": 1, "change": False, "relative": False, "seeds": seeds,
            "per_seed": [d_at(s, g_last) for s in seeds], "per_seed_curve": curve,
            "steps": [(g, [d_at(s, g) for s in seeds]) for g in gens], "scale": scale, "scale_note": scale_note,
            "difference": f"{metric} interaction (crossed)",
            "arms_text": f"({via} − {own}) + ({mirror_via} − {mirror_own}), changes to gen {g_last}"}


def _deceleration(rows: Sequence[Mapping[str, Any]], test: Mapping[str, Any], metric: str,
                  generations: Mapping[str, int]) -> dict[str, Any]:
    """One arm's d per seed (stats.deceleration) on the metric's badness: the first step's increment less the step
    into the test's generation; the real floor cancels from every step, so excess error needs none."""
    arm = test["arm"]
    g_last = test_generation(test, generations)
    curve = series(rows, arm, metric)
    seeds = sorted(curve)

    def d_at(seed: int, g: int) -> float | None:
        values = [curve[seed].get(x) for x in (0, 1, g - 1, g)]
        if None in values:
            return None
        return float(stats.deceleration(np.array([badness(metric, v) for v in values])))

    return {"kind": "deceleration", "arm": arm, "vs_arm": arm, "metric": metric, "vs_metric": metric,
            "generation": g_last, "vs_generation": g_last - 1, "expect": "decelerating", "sign": 1, "change": False,
            "relative": False, "seeds": seeds, "per_seed": [d_at(s, g_last) for s in seeds],
            "per_seed_curve": [None] * len(seeds),  # one d per chain: no curve to average
            "steps": [(g, [d_at(s, g) for s in seeds]) for g in range(2, g_last + 1)],
            "difference": f"{metric} deceleration (excess error's first step − step into gen {g_last})",
            "arms_text": f"{arm} steps 0→1 vs {g_last - 1}→{g_last}"}


def _pool_size(rows: Sequence[Mapping[str, Any]], arm: str) -> dict[int, float]:
    """{seed: the real pool's size} of an arm: what its generation 0 trained on (num_real), as its rows record it."""
    out = {}
    for row in rows:
        if row["arm"] == arm and int(row["generation"]) == 0 and (n := number(row.get("num_real"))):
            out[int(row["seed"])] = n
    return out


def _scaling(rows: Sequence[Mapping[str, Any]], test: Mapping[str, Any], metric: str, generations: Mapping[str, int],
             floors: Mapping[tuple[str, int], Mapping[str, float]]) -> dict[str, Any]:
    """Two scaling curves' d per seed: the power-law exponent of excess error over the real floor against the real
    pool's size (stats.power_law) of `vs_arms` less that of `arms`, at a generation: d > 0 where `arms`' curve is the
    flatter (more data helps it less). A seed with an excess <= 0 at some size has no exponent."""
    g_last = test_generation(test, generations)
    curves = {key: [(arm, series(rows, arm, metric), _pool_size(rows, arm)) for arm in test[key]]
              for key in ("arms", "vs_arms")}
    seeds = sorted(set.intersection(*(set(values) for c in curves.values() for _, values, _ in c)))

    def excess(arm: str, values: Mapping[int, Mapping[int, float]], seed: int, g: int) -> float | None:
        v, floor = values.get(seed, {}).get(g), floors.get((arm, seed), {}).get(metric)
        return None if v is None or floor is None else badness(metric, v) - badness(metric, floor)

    def exponent(key: str, seed: int, g: int) -> float | None:
        points = [(size.get(seed), excess(arm, values, seed, g)) for arm, values, size in curves[key]]
        if any(n is None or e is None for n, e in points) or len({n for n, _ in points}) < 2:
            return None
        b, _ = stats.power_law(np.array([n for n, _ in points]), np.array([e for _, e in points]))
        return float(b) if math.isfinite(b) else None

    gens = range(1, g_last + 1)
    fits = {g: {key: {s: exponent(key, s, g) for s in seeds} for key in curves} for g in gens}  # each fit once

    def d_at(seed: int, g: int) -> float | None:
        mine, theirs = fits[g]["arms"][seed], fits[g]["vs_arms"][seed]
        return None if mine is None or theirs is None else theirs - mine

    curve = []
    for s in seeds:
        per = [d_at(s, g) for g in gens]
        curve.append(float(np.mean(per)) if per and None not in per else None)
    points = {arm: {"size": size, "excess": {s: excess(arm, values, s, g_last) for s in seeds}}
              for c in curves.values() for arm, values, size in c}
    exponents = fits[g_last]
    # a seed with an excess <= 0 somewhere has no exponent; which seeds drop depends on their curves (a steep one
    # reaches the floor first), so the test says so and its verdict is read with that in mind
    dropped = [s for s in seeds if None in (exponents["arms"][s], exponents["vs_arms"][s])]
    arm, vs_arm = lead_arms(test)
    return {"kind": "scaling", "arm": arm, "vs_arm": vs_arm, "arms": list(test["arms"]),
            "vs_arms": list(test["vs_arms"]), "metric": metric, "vs_metric": metric, "generation": g_last,
            "vs_generation": g_last, "expect": "flatter", "sign": 1, "change": False, "relative": False,
            "seeds": seeds, "per_seed": [d_at(s, g_last) for s in seeds], "per_seed_curve": curve,
            "steps": [(g, [d_at(s, g) for s in seeds]) for g in gens], "points": points, "exponents": exponents,
            "dropped_seeds": dropped,
            "difference": f"{metric} scaling exponent (vs_arms − arms)",
            "arms_text": f"{'/'.join(test['arms'])} vs {'/'.join(test['vs_arms'])} at gen {g_last}"}


def _summary(values: Sequence[float | None], level_s: float, level_c: float) -> dict[str, Any]:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    keys = ("mean", "sd", "lo", "hi", "lo95", "hi95", "p", "p_claim", "p_against", "p_sign_claim", "p_sign_against")
    if not len(x):
        return {"n": 0, **dict.fromkeys(keys)}
    st = stats.describe(x, level_s, level_c)
    return {"n": len(x), **{k: _opt(st[k]) for k in keys}}


def run_test(rows: Sequence[Mapping[str, Any]], test: Mapping[str, Any], metric: str, generations: Mapping[str, int],
             rule: Mapping[str, Any], levels: tuple[float, float], planned: int = 0, first_free: int = 1,
             trusted: tuple[bool | None, str] = (None, ""),
             floors: Mapping[tuple[str, int], Mapping[str, float]] | None = None,
             model: str | None = None) -> dict[str, Any]:
    """One test on one metric at the levels (supported, contradicted) its place in the claim gives it: the paired
    differences across seeds, their statistics, the verdict, the smallest effect the design could detect, and where
    the arms first separate (descriptive: plain 95% intervals from `first_free`, the first generation not shared)."""
    kind = kind_of(test)
    if kind == "crossed":
        found = _crossed(rows, test, metric, generations, floors or {})
    elif kind == "deceleration":
        found = _deceleration(rows, test, metric, generations)
    elif kind == "scaling":
        found = _scaling(rows, test, metric, generations, floors or {})
    else:
        found = _differences(rows, test, metric, generations, first_free, model)
    level_s, level_c = levels
    last = _summary(found["per_seed"], level_s, level_c)
    curve = _summary(found["per_seed_curve"], level_s, level_c)
    separates = None
    for g, values in found.pop("steps"):
        st = t_interval(values)
        if st["lo"] is not None and (st["lo"] > 0 or st["hi"] < 0):
            separates = {"generation": g, "direction": "as claimed" if st["lo"] > 0 else "against the claim"}
            break
    votes, why = trusted
    if found.get("dropped_seeds"):
        dropped = found["dropped_seeds"]
        note = (f"seed(s) {', '.join(map(str, dropped))} of {len(found['seeds'])} have no exponent (an excess at or "
                "below the real floor at some size, or fewer than 2 sizes): judged on the rest, which leaves out the "
                "curves that reached the floor")
        why = f"{why}; {note}".strip("; ")
        if not last["n"]:
            votes = False
            log.warning("test %r: %s: it cannot vote", test.get("name") or metric, note)
    if not last["n"] and not found.get("dropped_seeds"):
        arms = found.get("mirror", {}).values() if kind == "crossed" else []
        votes, why = False, f"no rows with {found['metric']}" + (f" and {found['vs_metric']}" if found["vs_metric"]
                                                                 != found["metric"] else "") + \
            f" in arms {'/'.join(dict.fromkeys([found['arm'], found['vs_arm'], *arms]))}"
        log.warning("test %r: %s: it cannot vote", test.get("name") or metric, why)
    values = {**{k: last[k] for k in ("mean", "lo", "hi", "p", "p_claim", "p_against", "p_sign_claim",
                                      "p_sign_against", "n")},
              **{f"curve_{k}": curve[k] for k in ("mean", "lo", "hi", "p")}, "margin": test.get("margin"),
              "level_supported": level_s, "level_contradicted": level_c}
    holds = {v: evaluate_rule(parse_rule(rule[v], "rule"), values) for v in (SUPPORTED, CONTRADICTED)}
    verdict = INCONCLUSIVE
    if holds[SUPPORTED] and holds[CONTRADICTED]:
        why = f"{why}; both rules hold: inconclusive".strip("; ")
    elif holds[SUPPORTED]:
        verdict = SUPPORTED
    elif holds[CONTRADICTED]:
        verdict = CONTRADICTED
    orientation, read = found.pop("sign"), reads(rule)
    return {
        "name": test.get("name", ""), **found, "orientation": orientation,
        "last": last, "curve": curve, "separates_at": separates, "trusted": votes, "trust_note": why,
        "votes": votes is not False, "incomplete": bool(planned) and last["n"] < planned,
        "level_supported": level_s, "level_contradicted": level_c, "reads": read,
        # the smallest true d beyond the rule's threshold its one-sided test finds 4 times in 5, at this spread and n
        "detectable": stats.detectable(*((curve["sd"], curve["n"]) if read == "curve" else
                                          (last["sd"], last["n"])), level_s),
        "rule": {k: rule[k] for k in (SUPPORTED, CONTRADICTED)}, "margin": test.get("margin"), "verdict": verdict,
    }


def verdict_of(parts: Sequence[Mapping[str, Any]], how: str, conflict: bool = False) -> str:
    """One verdict from its parts' (each with `verdict` and `votes`): stats.combine, on one draw."""
    if not parts:
        return INCONCLUSIVE
    sup = np.array([p["verdict"] == SUPPORTED for p in parts])
    con = np.array([p["verdict"] == CONTRADICTED for p in parts])
    votes = np.array([bool(p["votes"]) for p in parts])
    s, c = stats.combine(sup, con, votes, how, conflict=conflict)
    return SUPPORTED if bool(s) else CONTRADICTED if bool(c) else INCONCLUSIVE


def _first_free(record: Mapping[str, Any], arm: str, vs_arm: str) -> int:
    """1 where the two arms share generation 0 (the same signature for every seed), else 0."""
    sig = {}
    for c in record["chains"]:
        sig.setdefault(c["arm"], {})[c["seed"]] = c.get("signature")
    a, b = sig.get(arm, {}), sig.get(vs_arm, {})
    shared = bool(a) and a.keys() == b.keys() and all(a[s] is not None and a[s] == b[s] for s in a)
    return 1 if shared or arm == vs_arm else 0


def judge(rows: Sequence[Mapping[str, Any]], record: Mapping[str, Any], root: Path,
          floors: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
    """claims.json: every claim's tests, numbers, levels and verdict. `floors`: {run dir: {metric: its real floor}}
    (report.metric_info.real_values of each chain's run.json), which scales a crossed design's d."""
    study = record["study"]
    generations = {c["arm"]: c["generation"] for c in record["chains"]}
    first_seed: dict[str, str] = {}
    for c in record["chains"]:
        first_seed.setdefault(c["arm"], c["run_dir"])
    by_chain = {(c["arm"], c["seed"]): (floors or {}).get(c["run_dir"], {}) for c in record["chains"]}
    model = record.get("model")  # the study's model kind: a test's `member: model` reads its columns
    seeds = sorted({c["seed"] for c in record["chains"]})
    out: dict[str, Any] = {"study": record["name"], "seeds": seeds, "claims": {}}
    calibrations: dict[str, dict[str, Any] | None] = {}  # each arm's, read once
    for name, claim in (study.get("claims") or {}).items():
        how = claim_combine(claim)
        plans = []
        for index, test in enumerate(claim["tests"]):  # which metrics vote: the calibration's, before any outcome
            lead, lead_vs = lead_arms(test)
            if lead not in calibrations:
                calibrations[lead] = read_calibration(Path(root) / first_seed[lead])
            calibration = calibrations[lead]
            rule = rule_of(study.get("rule"), claim, test)
            metrics = test.get("metrics") or [test["metric"]]
            metrics = [metrics] if isinstance(metrics, str) else list(metrics)
            vs_metric = test.get("vs_metric")
            trusts = {}
            for m in metrics:
                checks = [trust(calibration, c, test.get("trusted_for")) for c in dict.fromkeys([m, vs_metric or m])]
                flags = [t for t, _ in checks]
                trusts[m] = (False if False in flags else True if True in flags else None,
                             "; ".join(w for _, w in checks if w))
            plans.append((index, test, rule, metrics, trusts))
        alpha = plans[0][2]["alpha"] if plans else 0.05
        voting_tests = sum(any(t[0] is not False for t in p[4].values()) for p in plans)
        claim_s, claim_c = stats.split_levels(alpha / 2, alpha / 2, voting_tests, how)
        tests, groups, controlled = [], [], True
        for index, test, rule, metrics, trusts in plans:
            controlled = controlled and controls_level(rule) and rule["alpha"] == alpha
            voting = sum(t[0] is not False for t in trusts.values())
            levels = stats.split_levels(claim_s, claim_c, voting, rule["combine"])
            first_free = _first_free(record, *lead_arms(test))
            rows_of_test = [run_test(rows, test, m, generations, rule, levels, len(seeds), first_free, trusts[m],
                                     by_chain, model) for m in metrics]
            for row in rows_of_test:
                row["test"] = index
            tests += rows_of_test
            voters = [r for r in rows_of_test if r["votes"]]
            groups.append({"name": test.get("name") or f"test {index + 1}", "combine": rule["combine"],
                           "votes": bool(voters), "verdict": verdict_of(voters, rule["combine"], conflict=True),
                           "metrics": [r["metric"] for r in rows_of_test], "level_supported": claim_s,
                           "level_contradicted": claim_c,
                           "incomplete": any(r["incomplete"] for r in rows_of_test)})
        verdict = verdict_of(groups, how)
        words = claim.get("two_sided")
        if words:  # d's sign names the answer: reason() and the report read these words
            for t in tests:
                t["words"] = list(words)
        out["claims"][name] = {
            "statement": claim.get("statement", name), "source": claim.get("source", ""),
            "note": claim.get("note", ""), "combine": how, "verdict": verdict,
            "level": alpha if controlled else None, "incomplete": any(g["incomplete"] for g in groups),
            "groups": groups, "tests": tests}
        out["claims"][name]["reason"] = reason(out["claims"][name])
        if words:
            out["claims"][name]["two_sided"] = list(words)
            for part in (out["claims"][name], *groups, *tests):
                _read_two_sided(part, words)
    return out


def _read_two_sided(part: dict[str, Any], words: Sequence[str]) -> None:
    """A two-sided claim's part: supported or contradicted (a bound excludes 0) reads `differs`, in the direction
    d's sign names; the levels are the same two one-sided tests', so the error rate is unchanged."""
    if part["verdict"] in (SUPPORTED, CONTRADICTED):
        part["direction"] = words[0] if part["verdict"] == SUPPORTED else words[1]
        part["verdict"] = DIFFERS


def reading(part: Mapping[str, Any]) -> str:
    """A claim's, test's or metric's verdict as a page shows it: `supported`, or a two-sided `differs (faster)`."""
    return part["verdict"] + (f" ({part['direction']})" if part.get("direction") else "")


def read_calibration(run_dir: Path) -> dict[str, Any] | None:
    """A chain's calibration.json (None when absent or unreadable: its metrics are then not checked)."""
    from imgcollapse.metrics.calibration import CALIBRATION_VERSION, FILE

    path = run_dir / FILE
    try:
        found = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        log.warning("%s is unreadable: its metrics are not checked against the calibration", path)
        return None
    if found is not None and found.get("version") != CALIBRATION_VERSION:
        log.warning("%s is of calibration version %s (this code's: %s): `python -m imgcollapse.calibrate --refresh %s` "
                    "computes it again", path, found.get("version"), CALIBRATION_VERSION, run_dir)
    return found


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.3g}".replace("-", "−")


def reason(claim: Mapping[str, Any]) -> str:
    """One sentence on why a claim reads as it does: the metric that decided it, or for an undecided claim the test
    that held it back and its metric closest to deciding."""
    groups = claim.get("groups", [])
    if not any(g["votes"] for g in groups):
        return "no metric the calibration trusts for this change could vote"
    wanted = claim["verdict"]
    tests = [t for t in claim["tests"] if t["votes"]]
    if wanted != INCONCLUSIVE:
        t = next(t for t in tests if t["verdict"] == wanted and groups[t["test"]]["verdict"] == wanted)
        return f"{_seeds_text(t)}; {_holds_text(t, wanted)}"
    blocking = [i for i, g in enumerate(groups) if g["verdict"] != SUPPORTED] if claim["combine"] == "and" else \
        list(range(len(groups)))
    mute = [groups[i]["name"] for i in blocking if not groups[i]["votes"]]
    if mute and claim["combine"] == "and":
        return f"test {mute[0]!r} cannot vote (no metric the calibration trusts for it), and every test must agree"
    candidates = [t for t in tests if t["test"] in blocking] or tests
    t = max(candidates, key=lambda x: abs(x["last"]["mean"] or 0) / (x["last"]["sd"] or math.inf))
    group = groups[t["test"]]
    if t["verdict"] != INCONCLUSIVE and group["verdict"] == t["verdict"]:
        if claim["combine"] == "any":
            return (f"{_seeds_text(t)}; test {group['name']!r} is {_word(t, group['verdict'])}, but another test "
                    "points the other way")
        need = "every test to be supported" if claim["combine"] == "and" else "every test to be contradicted"
        return (f"{_seeds_text(t)}; test {group['name']!r} is {group['verdict']}, but the claim (joined by "
                f"{claim['combine']}) needs {need}")
    if t["verdict"] != INCONCLUSIVE:
        return (f"{_seeds_text(t)}; this metric alone is {t['verdict']}, but test {group['name']!r} is "
                f"{group['verdict']} (its metrics disagree)")
    stat = t["curve"] if t.get("reads") == "curve" else t["last"]
    if stat["lo"] is None:
        return f"{_seeds_text(t)}; no interval (the seeds agree exactly, or are too few): inconclusive"
    mde = t.get("detectable")
    prefix = "curve_" if t.get("reads") == "curve" else ""
    margin = f", margin {t['margin']}" if t.get("margin") is not None else ""
    return (f"{_seeds_text(t)}; neither rule holds ({_word(t, SUPPORTED)} if {t['rule'][SUPPORTED]}, "
            f"{_word(t, CONTRADICTED)} if {t['rule'][CONTRADICTED]}{margin}): {prefix}lo {_fmt(stat['lo'])} at level "
            f"{t['level_supported']:.2g}, {prefix}hi {_fmt(stat['hi'])} at level {t['level_contradicted']:.2g}"
            + (f"; the design could detect a d {_fmt(mde)} beyond the rule's threshold with 80% power"
               if mde is not None else ""))


def _holds_text(t: Mapping[str, Any], verdict: str) -> str:
    """`the rule lo > 0 holds: lo = 9.05 at level 0.0063`, naming the statistic the rule reads."""
    stat = t["curve"] if t.get("reads") == "curve" else t["last"]
    prefix = "curve_" if t.get("reads") == "curve" else ""
    side, level = ("lo", t["level_supported"]) if verdict == SUPPORTED else ("hi", t["level_contradicted"])
    margin = f" (margin {t['margin']})" if t.get("margin") is not None else ""
    return f"the rule {t['rule'][verdict]}{margin} holds: {prefix}{side} = {_fmt(stat[side])} at level {level:.2g}"


def _word(t: Mapping[str, Any], verdict: str) -> str:
    """What a verdict means for this test: itself, or for a two-sided claim the word of d's sign (`differs
    (faster)`)."""
    words = t.get("words")
    if not words or verdict not in (SUPPORTED, CONTRADICTED):
        return verdict
    return f"{DIFFERS} ({words[0] if verdict == SUPPORTED else words[1]})"


def _seeds_text(t: Mapping[str, Any]) -> str:
    """`recall (self gen 2 vs self gen 0): d > 0 (as claimed) in 3 of 3 seeds, by 0.06 to 0.12`."""
    values = [v for v in t["per_seed"] if v is not None]
    arms = t.get("arms_text") or f"{t['arm']} gen {t['generation']} vs {t['vs_arm']} gen {t['vs_generation']}"
    span = f"d from {_fmt(min(values))} to {_fmt(max(values))}" if values else "no values"
    claimed = f"d > 0 ({t['words'][0]})" if t.get("words") else "d > 0 (as claimed)"
    return f"{t['difference']} ({arms}): {claimed} in {sum(v > 0 for v in values)} of {len(values)} seeds, {span}"
