"""A study's answer from disk: study.csv (every row of every chain), claims.json (tests and verdicts), study.html.

Per arm and generation: the mean of each metric across seeds with its 95% t-interval (n seeds shown). Per claim,
each test is a paired comparison across seeds: for seed s, d_s = value(arm) − value(vs), oriented so that d > 0 is
what the claim says (`expect: worse` → d > 0 when the arm is worse by the metric's direction), at the test's
generation ("last": the arm's last) and averaged over the curve (generations 1..last, each against its
counterpart). Its mean, 95% t-interval and paired t-test p over the n seeds feed the verdict rule, written in the
study's config (`study.rule`, or a claim's `rule`): Python-like comparisons of mean, lo, hi, p, n, curve_mean,
curve_lo, curve_hi, curve_p and margin, joined by and/or/not, e.g. `supported: lo > 0`, `contradicted: hi < 0`;
anything else is inconclusive. A metric the calibration (calibration.json of the arm's seed-0 chain) does not trust
for the change a test is about (`trusted_for`) is shown but does not vote. A claim combines its voting tests with
`combine`: all (every one agrees) or any (one, and none against).
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgcollapse.errors import ConfigError
from imgcollapse.report import page
from imgcollapse.store import atomic_write_text, csv_text, to_json

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
# used where a study sets none; combine: how a test's metrics make its verdict (a claim's own `combine` joins its
# tests the same way): all (every voting metric agrees) | any (some, and none the other way)
RULE = {"supported": "lo > 0", "contradicted": "hi < 0", "combine": "any"}
RULE_NAMES = ("mean", "lo", "hi", "p", "n", "curve_mean", "curve_lo", "curve_hi", "curve_p", "margin")
EXPECT = ("worse", "better", "higher", "lower")
TEST_KEYS = {"name", "arm", "vs_arm", "metric", "metrics", "vs_metric", "generation", "vs_generation", "change",
             "expect", "relative", "margin", "trusted_for", "rule"}
CLAIM_KEYS = {"statement", "source", "tests", "rule", "note", "combine"}
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
HEADLINE = ("fid", "recall", "coverage", "precision")  # drawn for every arm when a claim names other metrics


# The rule: a tiny expression language, checked when the study loads --------------------------------------------
_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.Compare, ast.Lt, ast.LtE,
          ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.Name, ast.Load, ast.Constant, ast.BinOp, ast.Add, ast.Sub,
          ast.Mult, ast.Div)


_LOGICAL = (ast.Compare, ast.BoolOp, ast.UnaryOp)  # what a rule's root and and/or/not's operands must be


def parse_rule(text: str, key: str) -> ast.Expression:
    """A verdict rule as a checked expression tree: comparisons of RULE_NAMES and numbers (with + - * /), joined by
    and/or/not (ConfigError naming `key` for anything else)."""
    try:
        tree = ast.parse(str(text), mode="eval")
    except SyntaxError as e:
        raise ConfigError(key, text, f"a comparison such as 'lo > 0' ({e.msg})") from e
    what = f"comparisons of {', '.join(RULE_NAMES)} and numbers, joined by and/or/not"
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise ConfigError(key, text, what)
        if isinstance(node, ast.Name) and node.id not in RULE_NAMES:
            raise ConfigError(key, text, f"names among {', '.join(RULE_NAMES)} (not {node.id!r})")
        if isinstance(node, ast.Constant) and (isinstance(node.value, bool)
                                               or not isinstance(node.value, (int, float))):
            raise ConfigError(key, text, f"{what} (not the constant {node.value!r})")
        logical = node.values if isinstance(node, ast.BoolOp) else \
            [node.operand] if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not) else []
        if any(not isinstance(v, _LOGICAL) for v in logical):
            raise ConfigError(key, text, f"{what} (and/or/not join comparisons, not bare values)")
    if not isinstance(tree.body, _LOGICAL) or (isinstance(tree.body, ast.UnaryOp)
                                               and not isinstance(tree.body.op, ast.Not)):
        raise ConfigError(key, text, f"{what} (a rule is a comparison, such as 'lo > 0')")
    return tree


def evaluate_rule(tree: ast.Expression, values: Mapping[str, float | None]) -> bool:
    """The rule on one test's numbers, in three-valued logic: a comparison with a missing number is unknown, and
    so is `not` of it; the rule holds only when it is true."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BoolOp):
            parts = [ev(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return False if False in parts else None if None in parts else True
            return True if True in parts else None if None in parts else False
        if isinstance(node, ast.UnaryOp):
            inner = ev(node.operand)
            if inner is None:
                return None
            return (not inner) if isinstance(node.op, ast.Not) else -inner
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            if a is None or b is None:
                return None
            ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                   ast.Div: lambda: a / b if b else None}
            return ops[type(node.op)]()
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = ev(right_node)
                if left is None or right is None:
                    return None
                ok = {ast.Lt: left < right, ast.LtE: left <= right, ast.Gt: left > right, ast.GtE: left >= right,
                      ast.Eq: left == right, ast.NotEq: left != right}[type(op)]
                if not ok:
                    return False
                left = right
            return True
        if isinstance(node, ast.Name):
            value = values.get(node.id)
            return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
        if isinstance(node, ast.Constant):
            return node.value
        raise ValueError(f"unexpected node {type(node).__name__}")  # parse_rule admits none

    return ev(tree) is True


def uses_margin(text: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "margin" for n in ast.walk(ast.parse(str(text), mode="eval")))


def rule_of(study_rule: Mapping[str, Any] | None, claim: Mapping[str, Any], test: Mapping[str, Any]) -> dict:
    """The rule a test is judged by: the kit's default, the study's, the claim's, the test's (each may set some)."""
    return {**RULE, **(study_rule or {}), **(claim.get("rule") or {}), **(test.get("rule") or {})}


def check_claims(claims: Mapping[str, Any], study_rule: Mapping[str, Any], arms: Mapping[str, int]) -> None:
    """Every claim's keys, tests, arms (`arms`: {name: last generation}), metrics' directions, `trusted_for` and
    rules (ConfigError naming the key), so that a study fails when it loads, not after its chains ran."""
    from imgcollapse.metrics.calibration import CHANGES

    changes = set(CHANGES) | {kind for kind, *_ in CHANGES.values()}
    names = sorted(arms)
    _check_rule_keys(study_rule, "study.rule")
    for name, claim in (claims or {}).items():
        where = f"study.claims.{name}"
        if not isinstance(claim, Mapping) or not claim.get("tests"):
            raise ConfigError(where, claim, "a mapping with a statement and a list of tests")
        if unknown := set(claim) - CLAIM_KEYS:
            raise ConfigError(where, sorted(unknown), f"keys among {sorted(CLAIM_KEYS)}")
        _check_rule_keys(claim.get("rule"), f"{where}.rule")
        for i, test in enumerate(claim["tests"]):
            at = f"{where}.tests[{i}]"
            if unknown := set(test) - TEST_KEYS:
                raise ConfigError(at, sorted(unknown), f"keys among {sorted(TEST_KEYS)}")
            _check_rule_keys(test.get("rule"), f"{at}.rule")
            if "arm" not in test:
                raise ConfigError(f"{at}.arm", None, f"one of the study's arms {names}")
            for arm_key in ("arm", "vs_arm"):
                if arm_key in test and test[arm_key] not in arms:
                    raise ConfigError(f"{at}.{arm_key}", test[arm_key], f"one of the study's arms {names}")
            metrics = test.get("metrics") or test.get("metric")
            metrics = [metrics] if isinstance(metrics, str) else metrics
            if not metrics or not all(isinstance(m, str) for m in metrics):
                raise ConfigError(f"{at}.metrics", metrics, "a metric column (metric: fid) or a list (metrics: [...])")
            if test.get("expect") not in EXPECT:
                raise ConfigError(f"{at}.expect", test.get("expect"), f"one of {list(EXPECT)}: what the claim says "
                                  "of arm against vs_arm")
            if test["expect"] in ("worse", "better"):
                for m in [*metrics, *([test["vs_metric"]] if test.get("vs_metric") else [])]:
                    if direction(m) is None:
                        raise ConfigError(f"{at}.expect", test["expect"], f"higher or lower: which way is worse is "
                                          f"not known for {m!r} (report/metric_info.py knows the kit's columns)")
            for g_key in ("generation", "vs_generation"):
                g = test.get(g_key, "last")
                if g != "last" and not (isinstance(g, int) and g >= 0):
                    raise ConfigError(f"{at}.{g_key}", g, "'last' or a generation >= 0")
            vs_arm = test.get("vs_arm", test["arm"])
            g_a = arms[test["arm"]] if test.get("generation", "last") == "last" else test["generation"]
            g_b = test.get("vs_generation", g_a)
            g_b = arms[vs_arm] if g_b == "last" else g_b
            for arm, g, key in ((test["arm"], g_a, "generation"), (vs_arm, g_b, "vs_generation")):
                if g > arms[arm]:
                    raise ConfigError(f"{at}.{key}", g, f"a generation arm {arm} has (0..{arms[arm]}); give "
                                      "vs_generation where the arms' lengths differ")
            if vs_arm == test["arm"] and "vs_generation" not in test and not test.get("vs_metric"):
                raise ConfigError(at, test, "a comparison of two things: another arm (vs_arm), another generation "
                                  "(vs_generation) or another metric (vs_metric); this one is always 0")
            trusted = test.get("trusted_for")
            trusted = [trusted] if isinstance(trusted, str) else trusted or []
            if unknown := set(trusted) - changes:
                raise ConfigError(f"{at}.trusted_for", sorted(unknown), f"changes or kinds the calibration makes: "
                                  f"{sorted(changes)}")
            rule = rule_of(study_rule, claim, test)
            for verdict in (SUPPORTED, CONTRADICTED):
                parse_rule(rule[verdict], f"{at}.rule.{verdict}")
                if uses_margin(rule[verdict]) and not isinstance(test.get("margin"), (int, float)):
                    raise ConfigError(f"{at}.margin", test.get("margin"), f"a number: the rule {rule[verdict]!r} "
                                      "uses it")
            if rule["combine"] not in ("all", "any"):
                raise ConfigError(f"{at}.rule.combine", rule["combine"], "all or any")
        if claim.get("combine", "any") not in ("all", "any"):
            raise ConfigError(f"{where}.combine", claim.get("combine"), "all (every test) or any (some, none against)")


def _check_rule_keys(rule: Any, key: str) -> None:
    if rule is None:
        return
    if not isinstance(rule, Mapping):
        raise ConfigError(key, rule, f"a mapping with keys among {list(RULE)}")
    for k, value in rule.items():
        if k not in RULE:
            raise ConfigError(f"{key}.{k}", value, f"keys among {list(RULE)}")


# Reading the study --------------------------------------------------------------------------------------------
def is_study_dir(root: Path) -> bool:
    return (Path(root) / STUDY_FILE).is_file()


def read_rows(root: Path, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every finished generation of every chain, with `arm`, `seed` and `shared_gen0` (the row was adopted)."""
    from imgcollapse.store import RunStore

    rows = []
    for chain in record["chains"]:
        run = Path(root) / chain["run_dir"]
        if not (run / "gen_000").is_dir():
            continue
        shared_file = run / "shared_gen0.json"  # only a copied generation 0 (not an adopted model) is not its own
        shared = shared_file.exists() and json.loads(shared_file.read_text()).get("shared", "files") == "files"
        for row in RunStore(run).rows():
            rows.append({"arm": chain["arm"], "seed": chain["seed"],
                         "shared_gen0": bool(shared and row.get("generation") == 0), **row})
    return rows


def _number(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def t_interval(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, 95% t-interval and two-sided one-sample t-test p (against 0) of per-seed values; n = len(values).
    One value has no interval; values that are all equal have a zero-width one (p = 1 at 0, else 0)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None], dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "lo": None, "hi": None, "p": None, "sd": None}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "lo": None, "hi": None, "p": None, "sd": None}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
    # the one-sample t-test, by hand: scipy's warns of cancellation when seeds agree to many digits
    p = (1.0 if mean == 0 else 0.0) if sd == 0 else float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "p": p, "sd": sd}


def direction(metric: str) -> int | str | None:
    """+1 where larger is worse, -1 where smaller is, "one" where 1 is best (worse = farther from 1), None where the
    kit does not know: the calibration's table, then metric_info, for the column without its feature-space suffix,
    per-class (`recall_class_3`) and per-family (`fid_vae`) columns as their metric."""
    from imgcollapse.metrics.calibration import WORSE
    from imgcollapse.report.metric_info import METRICS

    base = metric
    for suffix in ("_inception", "_pixel"):
        base = base.removesuffix(suffix)
    candidates = [base, base.split("_class_")[0], base.rsplit("_", 1)[0]]
    for name in candidates:
        info = METRICS.get(name)
        if info is not None and info.better == "→1":
            return "one"
        if name in WORSE:
            return WORSE[name]
        if info is not None and info.better in ("↑", "↓"):
            return -1 if info.better == "↑" else 1
    return None


def _series(rows: Sequence[Mapping[str, Any]], arm: str, metric: str) -> dict[int, dict[int, float]]:
    """{seed: {generation: value}} of one arm's metric."""
    out: dict[int, dict[int, float]] = {}
    for row in rows:
        if row["arm"] == arm and (value := _number(row.get(metric))) is not None:
            out.setdefault(int(row["seed"]), {})[int(row["generation"])] = value
    return out


def _trust(calibration: Mapping[str, Any] | None, metric: str, trusted_for: Any) -> tuple[bool | None, str]:
    """(whether the calibration says `metric` sees a change of the kinds or names `trusted_for`, why); None: no
    calibration to ask (the test votes)."""
    if not trusted_for:
        return None, ""
    wanted = {trusted_for} if isinstance(trusted_for, str) else set(trusted_for)
    if not calibration:
        return None, "no calibration.json: not checked"
    changes = {name: entry.get("kind") for name, entry in calibration.get("changes", {}).items()}
    relevant = {name for name, kind in changes.items() if name in wanted or kind in wanted}
    if not relevant:  # e.g. class changes, on data without labels
        return None, f"the calibration made no {'/'.join(sorted(wanted))} change here: not checked"
    seen = set(calibration.get("sees", {}).get(metric, [])) & relevant
    if seen:
        return True, f"sees {', '.join(sorted(seen))}"
    return False, f"blind to {', '.join(sorted(relevant)) or '/'.join(sorted(wanted))} here"


def run_test(rows: Sequence[Mapping[str, Any]], test: Mapping[str, Any], metric: str, generations: Mapping[str, int],
             calibration: Mapping[str, Any] | None, rule: Mapping[str, Any], planned: int = 0) -> dict[str, Any]:
    """One test on one metric: the paired differences across seeds, their intervals and the verdict (`planned`:
    the seeds the study planned; fewer with numbers marks the test incomplete)."""
    arm, vs_arm = test["arm"], test.get("vs_arm", test["arm"])
    vs_metric = test.get("vs_metric") or metric
    expect = test["expect"]
    by_direction = expect in ("worse", "better")
    sign = 1 if expect in ("worse", "higher") else -1

    def oriented(column: str) -> Any:
        """value -> what d compares: for worse/better, larger is worse (distance from 1 where 1 is best)."""
        way = direction(column) if by_direction else 1
        return (lambda v: abs(v - 1)) if way == "one" else (lambda v: v * way)

    last = generations.get(arm, 0)
    g_a = last if test.get("generation", "last") == "last" else int(test["generation"])
    g_b_fixed = test.get("vs_generation")
    if g_b_fixed == "last":
        g_b_fixed = generations.get(vs_arm, 0)
    a, b = _series(rows, arm, metric), _series(rows, vs_arm, vs_metric)
    fa, fb = oriented(metric), oriented(vs_metric)
    change = bool(test.get("change"))
    relative = bool(test.get("relative"))

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

    seeds = sorted(set(a) & set(b))
    at_last = [diff(s, g_a, vs_g(g_a)) for s in seeds]
    curve_values = []
    for s in seeds:  # a seed's curve needs every generation: a chain that stopped early would bias it
        per = [diff(s, g, vs_g(g)) for g in range(1, g_a + 1)]
        curve_values.append(float(np.mean(per)) if per and None not in per else None)
    by_generation = {g: t_interval([diff(s, g, vs_g(g)) for s in seeds])
                     for g in range(0 if g_b_fixed is None else 1, g_a + 1)}
    last_stats = t_interval([d for d in at_last if d is not None])
    curve = t_interval([d for d in curve_values if d is not None])
    separates = next((g for g, st in by_generation.items() if st["lo"] is not None and (st["lo"] > 0 or st["hi"] < 0)),
                     None)
    trust = {m: _trust(calibration, m, test.get("trusted_for")) for m in dict.fromkeys([metric, vs_metric])}
    flags = [t for t, _ in trust.values()]
    trusted = False if False in flags else True if True in flags else None  # both columns must see the change
    why = "; ".join((f"{m}: {w}" if len(trust) > 1 else w) for m, (_, w) in trust.items() if w)
    if not last_stats["n"]:
        trusted, why = False, f"no rows with {metric}" + (f" and {vs_metric}" if vs_metric != metric else "") + \
            f" in arms {arm}/{vs_arm}"
        log.warning("test %r: %s: it cannot vote", test.get("name") or metric, why)
    values = {**{k: last_stats[k] for k in ("mean", "lo", "hi", "p", "n")},
              **{f"curve_{k}": curve[k] for k in ("mean", "lo", "hi", "p")}, "margin": test.get("margin")}
    holds = {v: evaluate_rule(parse_rule(rule[v], "rule"), values) for v in (SUPPORTED, CONTRADICTED)}
    verdict = INCONCLUSIVE
    if holds[SUPPORTED] and holds[CONTRADICTED]:
        why = f"{why}; both rules hold: inconclusive".strip("; ")
    elif holds[SUPPORTED]:
        verdict = SUPPORTED
    elif holds[CONTRADICTED]:
        verdict = CONTRADICTED
    what = f"{metric}" + (f" − {vs_metric}" if vs_metric != metric else "")
    return {
        "name": test.get("name", ""), "metric": metric, "vs_metric": vs_metric, "arm": arm, "vs_arm": vs_arm,
        "generation": g_a, "vs_generation": vs_g(g_a), "expect": expect,
        "change": change, "relative": relative, "difference": what, "orientation": sign,
        "seeds": seeds, "per_seed": at_last, "last": last_stats, "curve": curve, "per_seed_curve": curve_values,
        "separates_at": separates, "trusted": trusted, "trust_note": why, "votes": trusted is not False,
        "incomplete": bool(planned) and last_stats["n"] < planned,
        "rule": {k: rule[k] for k in (SUPPORTED, CONTRADICTED)}, "margin": test.get("margin"), "verdict": verdict,
    }


def combine(tests: Sequence[Mapping[str, Any]], how: str) -> str:
    """One verdict from several voting ones (a test's metrics, a claim's tests): all agree (how=all), or some and
    none against (how=any)."""
    votes = [t["verdict"] for t in tests if t["votes"]]
    if not votes:
        return INCONCLUSIVE
    if how == "all":  # every one must agree: one that cannot vote leaves the answer open
        return votes[0] if len(set(votes)) == 1 and len(votes) == len(tests) else INCONCLUSIVE
    if SUPPORTED in votes and CONTRADICTED not in votes:
        return SUPPORTED
    if CONTRADICTED in votes and SUPPORTED not in votes:
        return CONTRADICTED
    return INCONCLUSIVE


def judge(rows: Sequence[Mapping[str, Any]], record: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """claims.json: every claim's tests, numbers and verdict."""
    study = record["study"]
    generations = {c["arm"]: c["generation"] for c in record["chains"]}
    first_seed = {}
    for c in record["chains"]:
        first_seed.setdefault(c["arm"], c["run_dir"])
    out: dict[str, Any] = {"study": record["name"], "seeds": sorted({c["seed"] for c in record["chains"]}),
                           "claims": {}}
    for name, claim in (study.get("claims") or {}).items():
        tests, groups = [], []
        for index, test in enumerate(claim["tests"]):
            calibration = _calibration(Path(root) / first_seed[test["arm"]])
            rule = rule_of(study.get("rule"), claim, test)
            metrics = test.get("metrics") or [test["metric"]]
            rows_of_test = [run_test(rows, test, metric, generations, calibration, rule, len(out["seeds"]))
                            for metric in ([metrics] if isinstance(metrics, str) else metrics)]
            for row in rows_of_test:
                row["test"] = index
            tests += rows_of_test
            voting = [r for r in rows_of_test if r["votes"]]
            groups.append({"name": test.get("name") or f"test {index + 1}", "combine": rule["combine"],
                           "votes": bool(voting), "verdict": combine(voting, rule["combine"]),
                           "metrics": [r["metric"] for r in rows_of_test],
                           "incomplete": any(r["incomplete"] for r in rows_of_test)})
        how = claim.get("combine", "any")
        out["claims"][name] = {"statement": claim.get("statement", name), "source": claim.get("source", ""),
                               "note": claim.get("note", ""), "combine": how, "verdict": combine(groups, how),
                               "incomplete": any(g["incomplete"] for g in groups),
                               "groups": groups, "tests": tests}
    return out


def _calibration(run_dir: Path) -> dict[str, Any] | None:
    from imgcollapse.metrics.calibration import FILE

    path = run_dir / FILE
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        log.warning("%s is unreadable: its metrics are not checked against the calibration", path)
        return None


# Writing ---------------------------------------------------------------------------------------------------------
def arm_bands(rows: Sequence[Mapping[str, Any]], arms: Sequence[str], metric: str) -> dict[str, tuple]:
    """{arm: (generations, mean, half-width of the 95% t-interval, n)} across seeds."""
    out = {}
    for arm in arms:
        by_seed = _series(rows, arm, metric)
        gens = sorted({g for values in by_seed.values() for g in values})
        means, halves, counts = [], [], []
        for g in gens:
            st = t_interval([v[g] for v in by_seed.values() if g in v])
            means.append(st["mean"])
            halves.append(0.0 if st["lo"] is None else st["mean"] - st["lo"])
            counts.append(st["n"])
        if gens:
            out[arm] = tuple(np.array(x, dtype=float) for x in (gens, means, halves, counts))
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    number = _number(value)
    return "" if number is None else f"{number:.{digits}g}"


def _interval_text(st: Mapping[str, Any]) -> str:
    if st.get("mean") is None:
        return "no seeds"
    if st.get("lo") is None:
        return f"{_fmt(st['mean'])} (n={st['n']}: no interval)"
    return f"{_fmt(st['mean'])} [{_fmt(st['lo'])}, {_fmt(st['hi'])}]"


def _claim_metrics(claim: Mapping[str, Any]) -> list[str]:
    seen: list[str] = []
    for t in claim["tests"]:
        for m in (t["metric"], t["vs_metric"]):
            if m not in seen:
                seen.append(m)
    return seen


def _claim_section(root: Path, name: str, claim: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                   record: Mapping[str, Any], figure: Path | None) -> str:
    arms = list(dict.fromkeys(a for t in claim["tests"] for a in (t["arm"], t["vs_arm"])))
    parts = [f"<p><b>{page.esc(claim['statement'])}</b>" + (f" ({page.esc(claim['source'])})" if claim["source"]
                                                          else "") + "</p>",
             f"<p>verdict: <b class=verdict-{claim['verdict']}>{claim['verdict']}</b>"
             f"{' (incomplete: fewer seeds than planned)' if claim.get('incomplete') else ''} "
             f"(its tests combined: {page.esc(claim['combine'])})</p>"]
    if claim.get("note"):
        parts.append(f"<p>{page.esc(claim['note'])}</p>")
    parts.append(page.bullet_list([f"{g['name']}: {g['verdict']}" + ("" if g["votes"] else " (no metric the "
                                   "calibration trusts for it: no vote)") + f" ({', '.join(g['metrics'])}; "
                                   f"metrics combined: {g['combine']})" for g in claim.get("groups", [])]))
    test_rows = []
    for t in claim["tests"]:
        vs = t["vs_arm"] + (f" gen {t['vs_generation']}" if t["vs_generation"] != t["generation"] else "")
        test_rows.append({
            "test": t["name"] or "", "metric": t["difference"] + (" (change since gen 0)" if t["change"] else "")
            + (" (relative)" if t["relative"] else ""),
            "arm": f"{t['arm']} gen {t['generation']}", "is expected": t["expect"], "than": vs,
            "n": t["last"]["n"], "d at the generation [95% CI]": _interval_text(t["last"]),
            "p": _fmt(t["last"]["p"], 2), "d over the curve [95% CI]": _interval_text(t["curve"]),
            "separates at gen": "" if t["separates_at"] is None else t["separates_at"],
            "calibration": t["trust_note"] or "—", "verdict": t["verdict"] + ("" if t["votes"] else " (no vote)")
            + (" (incomplete)" if t.get("incomplete") else ""),
        })
    parts.append(page.table(list(test_rows[0]) if test_rows else [], test_rows))
    rules = sorted({f"supported if {t['rule'][SUPPORTED]}; contradicted if {t['rule'][CONTRADICTED]}"
                    for t in claim["tests"]})
    parts.append("<p class=ci>d &gt; 0 means what the claim says; d is paired by seed (same seed, same generation 0 "
                 f"where arms share it). Rule: {page.esc(' / '.join(rules))}; else inconclusive.</p>")
    if figure is not None:
        parts.append(page.embedded_image(figure, f"{name} curves"))
    strips = []
    for arm in arms:
        chain = next((c for c in record["chains"] if c["arm"] == arm), None)
        strip = Path(root) / chain["run_dir"] / "collapse_strip.png" if chain else None
        if strip is not None and strip.exists():
            strips.append(f"<figure style='display:inline-block;margin:0 12px 8px 0'>"
                          f"{page.embedded_image(strip, arm)}<figcaption>{page.esc(arm)} (seed "
                          f"{chain['seed']})</figcaption></figure>")
    if strips:
        parts.append("<p>collapse strips (the same noise through every generation):</p><div class=grids>"
                     + "".join(strips) + "</div>")
    return "\n".join(parts)


def build_study_report(root: Path) -> dict[str, Any]:
    """Write study.csv, claims.json, one figure per claim and study.html in the study dir; returns claims.json."""
    from imgcollapse.report.plots import save_figure, sweep_figure

    root = Path(root)
    record = json.loads((root / STUDY_FILE).read_text())
    rows = read_rows(root, record)
    columns = ["arm", "seed", "shared_gen0"]
    for row in rows:
        columns += [c for c in row if c not in columns]
    atomic_write_text(root / "study.csv", csv_text(rows, columns))
    result = judge(rows, record, root)
    result["runs"] = record.get("runs", [])
    result["missing"] = missing_chains(root, record)
    atomic_write_text(root / "claims.json", to_json(result))

    sections = [("Claims", _claims_table(result))]
    arm_names = list(dict.fromkeys(c["arm"] for c in record["chains"]))
    colors = {arm: f"C{k % 10}" for k, arm in enumerate(arm_names)}  # an arm has one colour in every figure
    for name, claim in result["claims"].items():
        arms = list(dict.fromkeys(a for t in claim["tests"] for a in (t["arm"], t["vs_arm"])))
        metrics = _claim_metrics(claim)
        bands = {m: b for m in metrics if (b := arm_bands(rows, arms, m))}
        figure = None
        if bands:
            figure = root / f"claim_{name}.png"
            save_figure(sweep_figure(bands, colors), figure)
        sections.append((f"Claim: {name}", _claim_section(root, name, claim, rows, record, figure)))
    headline = {m: b for m in HEADLINE if (b := arm_bands(rows, arm_names, m))}
    if headline:
        save_figure(sweep_figure(headline, colors), root / "study.png")
        sections.append(("Every arm (mean and 95% interval across seeds)", page.embedded_image(root / "study.png",
                                                                                           "every arm")))
    sections.append(("Arms", _arms_table(root, record, rows)))
    intro = page.bullet_list([
        f"{len(arm_names)} arm(s) × {len(result['seeds'])} seed(s) ({', '.join(map(str, result['seeds']))}); "
        "bands and intervals are 95% t-intervals across seeds, n shown",
        "overrides for every arm: " + (" ".join(record.get("common_overrides") or []) or "none"),
        *(f"run {i + 1}: {r['time']}, {r['seconds']:.0f} s, {r['chains_run']} chain(s) run"
          for i, r in enumerate(record.get("runs", []))),
    ]) + page.bullet_list(result["missing"], "missing")
    description = record["study"].get("description") or ""
    intro = (f"<p>{page.esc(description)}</p>" if description else "") + intro
    atomic_write_text(root / "study.html", page.document(f"imgcollapse study: {record['name']}", sections, intro))
    return result


def missing_chains(root: Path, record: Mapping[str, Any]) -> list[str]:
    """One line per chain that has not reached its last generation (or failed)."""
    from imgcollapse.jobs import read_failed
    from imgcollapse.store import RunStore

    out = []
    for c in record["chains"]:
        run = Path(root) / c["run_dir"]
        done = RunStore(run).num_done() if run.is_dir() else 0
        failed = read_failed(run)
        if failed:
            out.append(f"{c['run_dir']}: failed (exit {failed[0]}): {failed[1]}")
        elif done <= c["generation"]:
            out.append(f"{c['run_dir']}: {done} of {c['generation'] + 1} generations finished")
    return out


def _claims_table(result: Mapping[str, Any]) -> str:
    rows = []
    for name, claim in result["claims"].items():
        tests = "; ".join(f"{g['name']}: {g['verdict']}" for g in claim.get("groups", []))
        rows.append({"claim": name, "statement": claim["statement"],
                     "verdict": claim["verdict"] + (" (incomplete: fewer seeds than planned)"
                                                    if claim.get("incomplete") else ""),
                     "n seeds": max((t["last"]["n"] for t in claim["tests"]), default=0), "its tests": tests})
    return page.table(["claim", "statement", "verdict", "n seeds", "its tests"], rows)


def _arms_table(root: Path, record: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    out = []
    for c in record["chains"]:
        run = Path(root) / c["run_dir"]
        link = f'<a href="{page.esc(c["run_dir"])}/report.html">report</a>' if (run / "report.html").exists() else ""
        arm_overrides = [o for o in c["overrides"]
                         if not o.startswith(("seed=", "generation=", "threads=", "report.draw="))]
        out.append({"chain": c["run_dir"], "overrides": " ".join(arm_overrides), "generations":
                    sum(1 for r in rows if r["arm"] == c["arm"] and r["seed"] == c["seed"]),
                    "generation 0": _generation0_source(run, root),
                    "report": link})
    return page.table(["chain", "overrides", "generations", "generation 0", "report"], out, raw=("report",))


def _generation0_source(run: Path, root: Path) -> str:
    """Where a chain's generation 0 came from, as its shared_gen0.json says (not as planned: an earlier plan may
    have trained it)."""
    path = run / "shared_gen0.json"
    if not path.exists():
        return "own" if (run / "gen_000" / "DONE").exists() else ""
    shared = json.loads(path.read_text())
    source = Path(shared.get("source", ""))
    where = source.relative_to(root.resolve()) if source.is_relative_to(root.resolve()) else source
    return f"{'model' if shared.get('shared') == 'model' else 'files'} of {where}"


def _markdown_interval(st: Mapping[str, Any]) -> str:
    """`3.3 [1.6, 5.0]`: the mean and its interval to the decimals the interval's width supports, with true minus
    signs."""
    mean, lo, hi = (_number(st.get(k)) for k in ("mean", "lo", "hi"))
    if mean is None:
        return "no seeds"
    if lo is None or hi is None:
        return f"{_fmt(mean)} (n={st.get('n')}: no interval)"
    half = (hi - lo) / 2
    decimals = max(0, 1 - math.floor(math.log10(half))) if half > 0 else 3
    return " ".join([f"{mean:.{decimals}f}", f"[{lo:.{decimals}f}, {hi:.{decimals}f}]"]).replace("-", "−")


def claims_markdown(result: Mapping[str, Any]) -> str:
    """The claims as a Markdown table (the README's): a line per test of each claim, each metric's paired difference
    at the test's generation with its 95% interval, and n; `python -m imgcollapse.report STUDY_DIR --markdown`."""
    lines = ["| claim | verdict | test: verdict (arm vs arm) | d [95% CI] (d > 0: as claimed) | n |",
             "| --- | --- | --- | --- | --- |"]
    for claim in result["claims"].values():
        verdict = claim["verdict"] if claim["verdict"] == "inconclusive" else f"**{claim['verdict']}**"
        source = f" ({claim['source']})" if claim.get("source") else ""
        for i, group in enumerate(claim.get("groups", [])):
            metrics = [t for t in claim["tests"] if t.get("test") == i]
            first = metrics[0] if metrics else None
            arms = "" if first is None else (f"{first['arm']} gen {first['generation']} vs {first['vs_arm']} gen "
                                              f"{first['vs_generation']}")
            numbers = "; ".join(f"{t['difference']}" + (" change" if t["change"] else "")
                                + (" relative" if t["relative"] else "") + f" {_markdown_interval(t['last'])}"
                                + ("" if t["votes"] else " (blind)") for t in metrics)
            lines.append(f"| {claim['statement'] + source if i == 0 else ''} | {verdict if i == 0 else ''} | "
                         f"{group['name']}: {group['verdict']} ({arms}) | {numbers} | "
                         f"{first['last']['n'] if first else 0} |")
    return "\n".join(lines)


def read_csv(path: Path) -> list[dict[str, str]]:
    """study.csv's rows (for scripts)."""
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))
