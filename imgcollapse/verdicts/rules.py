"""The verdict rule: a tiny expression language written in a study's config, checked when the study loads.

A rule is a comparison of RULE_NAMES and numbers (with + - * /), joined by and/or/not, e.g. `supported: lo > 0`,
`contradicted: hi < 0`. `lo` and `hi` are the one-sided bounds at the levels error control assigns to the metric
(imgcollapse/verdicts/stats.py), so the default rule is a one-sided t-test at that level in each direction. A rule
of that form (or `p_claim < level_supported`) has the family-wise level `alpha` the engine states; any other rule is
the user's, and its level is reported as not stated.

A test is of one of four kinds (`kind`): `difference` (the default: an arm against another arm, generation or
metric, paired by seed), `crossed` (a crossed design of two families, source × learner: the interaction of four
chains), `deceleration` (one arm's excess error: its first step's increment less its last one's) and `scaling` (two
curves of excess error against the real pool's size, `arms` against `vs_arms`: the difference of their power-law
exponents, stats.power_law). A claim with
`two_sided: [word for d > 0, word for d < 0]` asks an open question: its tests join as one family, Bonferroni both
ways, and it reads "differs" (with the word of d's sign) or inconclusive.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from typing import Any

from imgcollapse.errors import ConfigError
from imgcollapse.metric_facts import worse

# used where a study sets none. combine: how a test's metrics make its verdict: any (one family: some metric decides,
# none against, Bonferroni both ways) | all (every metric); alpha: each claim's family-wise level (under no effect,
# a claim is decided at most alpha of the time, alpha/2 each way)
RULE = {"supported": "lo > 0", "contradicted": "hi < 0", "combine": "any", "alpha": 0.05}
COMBINE = {"and": "and", "or": "or", "all": "and", "any": "or"}  # a claim's tests; all/any: the names before 0.4
TEST_COMBINE = {"any": "any", "all": "and", "or": "any", "and": "and"}  # a test's metrics
RULE_NAMES = ("mean", "lo", "hi", "p", "p_claim", "p_against", "p_sign_claim", "p_sign_against", "n", "curve_mean",
              "curve_lo", "curve_hi", "curve_p", "margin", "level_supported", "level_contradicted")
EXPECT = ("worse", "better", "higher", "lower")
TEST_KEYS = {"name", "kind", "arm", "vs_arm", "arms", "vs_arms", "mirror", "member", "metric", "metrics", "vs_metric",
             "generation", "vs_generation", "change", "expect", "relative", "margin", "trusted_for", "rule"}
TEST_KINDS = ("difference", "crossed", "deceleration", "scaling")
# the keys only a difference reads: a crossed design's and a deceleration's d is fixed by their kind
DIFFERENCE_ONLY = ("vs_generation", "vs_metric", "change", "relative", "member", "expect")
CLAIM_KEYS = {"statement", "source", "tests", "rule", "note", "combine", "two_sided"}
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
DIFFERS = "differs"  # a two-sided claim's verdict where a bound excludes 0: supported or contradicted, read by sign


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


def normalised(rule: Mapping[str, Any] | None) -> dict:
    """A rule with its metrics' `combine` read as any (one family) or and (every metric); `or` and `all` name them
    too."""
    out = dict(rule or {})
    if "combine" in out:
        out["combine"] = TEST_COMBINE.get(out["combine"], out["combine"])
    return out


def rule_of(study_rule: Mapping[str, Any] | None, claim: Mapping[str, Any], test: Mapping[str, Any]) -> dict:
    """The rule a test is judged by: the kit's default, the study's, the claim's, the test's (each may set some)."""
    return {**RULE, **normalised(study_rule), **normalised(claim.get("rule")), **normalised(test.get("rule"))}


def claim_combine(claim: Mapping[str, Any]) -> str:
    """How a claim joins its tests: and | or (default or; all/any read as and/or); a two-sided claim's tests are one
    family (`any`: some test decides and none points the other way, Bonferroni both ways)."""
    if claim.get("two_sided"):
        return "any"
    how = claim.get("combine", "or")
    return COMBINE.get(how, how)


def kind_of(test: Mapping[str, Any]) -> str:
    """A test's kind: difference (default), crossed, deceleration or scaling."""
    return str(test.get("kind", "difference"))


def lead_arms(test: Mapping[str, Any]) -> tuple[str, str]:
    """(arm, vs_arm) that stand for a test where one arm is named (its calibration, its label): a scaling test's
    largest pools, the last of `arms` and of `vs_arms`."""
    if kind_of(test) == "scaling":
        return test["arms"][-1], test["vs_arms"][-1]
    return test["arm"], test.get("vs_arm", test["arm"])


def crossed_arms(test: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """A crossed design's four arms: (A via B, A's own loop, B via A, B's own loop)."""
    mirror = test.get("mirror") or {}
    return test["arm"], test["vs_arm"], mirror.get("arm"), mirror.get("vs_arm")


def test_generation(test: Mapping[str, Any], generations: Mapping[str, int]) -> int:
    """The generation a test reads its arm at: its `generation`, else `last`: the arm's last; where it compares with
    another arm at the same generation, the last both have (an arm may run longer for another test); in a crossed
    design, the last all four have."""
    g = test.get("generation", "last")
    if g != "last":
        return int(g)
    kind = kind_of(test)
    if kind == "crossed":
        return min(generations.get(a, 0) for a in crossed_arms(test))
    if kind == "scaling":
        return min(generations.get(a, 0) for a in (*test["arms"], *test["vs_arms"]))
    g = generations.get(test["arm"], 0)
    vs_arm = test.get("vs_arm", test["arm"])
    if kind == "difference" and test.get("vs_generation") is None and vs_arm != test["arm"]:
        g = min(g, generations.get(vs_arm, 0))
    return g


def compared(test: Mapping[str, Any], generations: Mapping[str, int]) -> list[tuple[str, int, str]]:
    """(arm, generation, the test's key that sets it) for every value a test reads at its generation (generation 0,
    which every arm's home family trains, left out)."""
    g = test_generation(test, generations)
    kind = kind_of(test)
    if kind == "crossed":
        return [(arm, g, "generation") for arm in crossed_arms(test)]
    if kind == "deceleration":
        return [(test["arm"], x, "generation") for x in sorted({1, g - 1, g}) if x > 0]
    if kind == "scaling":
        return [(arm, g, "generation") for arm in (*test["arms"], *test["vs_arms"])]
    vs_arm = test.get("vs_arm", test["arm"])
    vs_g = test.get("vs_generation")
    vs_g = generations.get(vs_arm, 0) if vs_g == "last" else g if vs_g is None else int(vs_g)
    return [(test["arm"], g, "generation"), (vs_arm, vs_g, "vs_generation")]


def member_label(member: str, model: str | None) -> str | None:
    """A population member's column suffix: `model` names the study's model's own family (fid_ddpm, fid_vae, ...)."""
    return model if member == "model" else member


def controls_level(rule: Mapping[str, Any]) -> bool:
    """Whether a rule is one whose error rate the engine states: `supported: lo > c` and `contradicted: hi < c` with
    the same threshold c (a number, or ±margin: the null is then d = c) read on the same statistic (`lo`/`hi` or
    `curve_lo`/`curve_hi`), or `p_claim < level_supported` and `p_against < level_contradicted` (or the sign test's
    `p_sign_claim`, `p_sign_against`)."""

    def parts(text: str) -> tuple[str, type, str] | None:
        body = ast.parse(str(text), mode="eval").body
        if not (isinstance(body, ast.Compare) and len(body.ops) == 1 and isinstance(body.left, ast.Name)):
            return None
        right = body.comparators[0]
        if any(isinstance(n, ast.Name) and n.id not in ("margin", "level_supported", "level_contradicted")
               for n in ast.walk(right)):
            return None
        return body.left.id, type(body.ops[0]), right.id if isinstance(right, ast.Name) else ast.dump(right)

    sup, con = parts(rule[SUPPORTED]), parts(rule[CONTRADICTED])
    if sup is None or con is None:
        return False
    pairs = {("lo", "hi"), ("curve_lo", "curve_hi")}
    if (sup[0], con[0]) in pairs:
        return sup[1] in (ast.Gt, ast.GtE) and con[1] in (ast.Lt, ast.LtE) and sup[2] == con[2] \
            and "level_" not in sup[2]
    levels = "level_supported", "level_contradicted"
    return (sup[0], con[0]) in {("p_claim", "p_against"), ("p_sign_claim", "p_sign_against")} \
        and sup[1] is ast.Lt and con[1] is ast.Lt and (sup[2], con[2]) == levels


def reads(rule: Mapping[str, Any]) -> str:
    """Which statistic a rule reads: `curve` (the curve's average d) or `last` (d at the test's generation)."""
    names = {n.id for v in (rule[SUPPORTED], rule[CONTRADICTED]) for n in ast.walk(ast.parse(str(v), mode="eval"))
             if isinstance(n, ast.Name)}
    return "curve" if names & {"curve_mean", "curve_lo", "curve_hi", "curve_p"} and not \
        names & {"mean", "lo", "hi", "p", "p_claim", "p_against", "p_sign_claim", "p_sign_against"} else "last"


def check_claims(claims: Mapping[str, Any], study_rule: Mapping[str, Any], arms: Mapping[str, int]) -> None:
    """Every claim's keys, tests, arms (`arms`: {name: last generation}), metrics' directions, `trusted_for` and
    rules (ConfigError naming the key), so that a study fails when it loads, not after its chains ran."""
    from imgcollapse.metrics.calibration import CHANGES

    changes = set(CHANGES) | {kind for kind, *_ in CHANGES.values()}
    study_rule = normalised(study_rule)
    names = sorted(arms)
    _check_rule_keys(study_rule, "study.rule")
    for name, claim in (claims or {}).items():
        where = f"study.claims.{name}"
        if not isinstance(claim, Mapping) or not claim.get("tests"):
            raise ConfigError(where, claim, "a mapping with a statement and a list of tests")
        if unknown := set(claim) - CLAIM_KEYS:
            raise ConfigError(where, sorted(unknown), f"keys among {sorted(CLAIM_KEYS)}")
        _check_rule_keys(claim.get("rule"), f"{where}.rule")
        words = claim.get("two_sided")
        if words is not None:
            if not (isinstance(words, (list, tuple)) and len(words) == 2 and all(isinstance(w, str) and w
                                                                                 for w in words)
                    and words[0] != words[1]):
                raise ConfigError(f"{where}.two_sided", words, "two words, what d > 0 and d < 0 mean (e.g. [faster, "
                                  "slower]): the claim then reads 'differs (faster)', 'differs (slower)' or "
                                  "inconclusive")
            if "combine" in claim:
                raise ConfigError(f"{where}.combine", claim["combine"], "absent in a two-sided claim: its tests "
                                  "are one family (some test decides, none points the other way)")
            # the words read the sign of d in every test: each test's d must point the same way (a crossed
            # design's d > 0 is "worse": the cross chains collapse faster)
            senses = {"worse" if kind_of(t) == "crossed" else t.get("expect") for t in claim["tests"]
                      if isinstance(t, Mapping)}
            if len(senses) > 1:
                raise ConfigError(f"{where}.tests", sorted(str(x) for x in senses), "one `expect` for every test "
                                  f"of a two-sided claim ({words[0]!r} must mean the same in each)")
        for i, test in enumerate(claim["tests"]):
            _check_test(test, f"{where}.tests[{i}]", arms, names, changes, rule_of(study_rule, claim, test))
        if claim.get("combine", "or") not in COMBINE:
            raise ConfigError(f"{where}.combine", claim.get("combine"), "and (supported only if every test is; "
                              "contradicted if any is) or or (the dual)")


def _check_test(test: Mapping[str, Any], at: str, arms: Mapping[str, int], names: list[str], changes: set[str],
                rule: Mapping[str, Any]) -> None:
    """One test's keys, arms, metrics, generations, `trusted_for` and rule (ConfigError naming the key)."""
    from imgcollapse.metric_facts import MEMBER_COLUMNS

    if unknown := set(test) - TEST_KEYS:
        raise ConfigError(at, sorted(unknown), f"keys among {sorted(TEST_KEYS)}")
    kind = kind_of(test)
    if kind not in TEST_KINDS:
        raise ConfigError(f"{at}.kind", kind, f"one of {list(TEST_KINDS)}")
    _check_rule_keys(test.get("rule"), f"{at}.rule")
    if kind == "scaling":
        _check_scaling(test, at, arms, names)
    elif "arm" not in test:
        raise ConfigError(f"{at}.arm", None, f"one of the study's arms {names}")
    elif given := [k for k in ("arms", "vs_arms") if k in test]:
        raise ConfigError(f"{at}.{given[0]}", test[given[0]], "absent unless kind: scaling (a test of another kind "
                          "names its arms by arm and vs_arm)")
    if kind != "difference" and (given := [k for k in DIFFERENCE_ONLY if k in test]):
        raise ConfigError(f"{at}.{given[0]}", test[given[0]], f"absent in a test of kind {kind}: its d is fixed "
                          "(docs/STUDIES.md \"Test kinds\")")
    if kind != "crossed" and "mirror" in test:
        raise ConfigError(f"{at}.mirror", test["mirror"], "absent unless kind: crossed")
    if kind == "crossed":
        mirror = test.get("mirror")
        if not (isinstance(mirror, Mapping) and set(mirror) == {"arm", "vs_arm"}):
            raise ConfigError(f"{at}.mirror", mirror, "{arm: B via A, vs_arm: B's own loop}: the same comparison "
                              "with the families' roles swapped")
        if "vs_arm" not in test:
            raise ConfigError(f"{at}.vs_arm", None, "the arm's home family's own loop (A's own loop, beside arm: A "
                              "via B)")
        for key, arm in (("arm", test["arm"]), ("vs_arm", test["vs_arm"]), ("mirror.arm", mirror["arm"]),
                         ("mirror.vs_arm", mirror["vs_arm"])):
            if arm not in arms:
                raise ConfigError(f"{at}.{key}", arm, f"one of the study's arms {names}")
        if len(set(crossed_arms(test))) != 4:
            raise ConfigError(f"{at}.mirror", mirror, "four different arms: A via B, A's own loop, B via A, B's own "
                              "loop")
    elif kind == "deceleration" and "vs_arm" in test:
        raise ConfigError(f"{at}.vs_arm", test["vs_arm"], "absent: a deceleration reads one arm's own curve")
    for arm_key in ("arm", "vs_arm"):
        if arm_key in test and test[arm_key] not in arms:
            raise ConfigError(f"{at}.{arm_key}", test[arm_key], f"one of the study's arms {names}")
    metrics = test.get("metrics") or test.get("metric")
    metrics = [metrics] if isinstance(metrics, str) else metrics
    if not metrics or not all(isinstance(m, str) for m in metrics):
        raise ConfigError(f"{at}.metrics", metrics, "a metric column (metric: fid) or a list (metrics: [...])")
    if kind == "difference" and test.get("expect") not in EXPECT:
        raise ConfigError(f"{at}.expect", test.get("expect"), f"one of {list(EXPECT)}: what the claim says "
                          "of arm against vs_arm")
    if kind != "difference" or test["expect"] in ("worse", "better"):
        for m in [*metrics, *([test["vs_metric"]] if test.get("vs_metric") else [])]:
            if worse(m) is None:
                key = "expect" if kind == "difference" else "metrics"
                raise ConfigError(f"{at}.{key}", test.get(key), f"higher or lower: which way is worse is not "
                                  f"known for {m!r} (imgcollapse/metric_facts.py knows the kit's columns)")
    if "member" in test:
        if not (isinstance(test["member"], str) and test["member"]):
            raise ConfigError(f"{at}.member", test["member"], "a member of the arm's population (chain.population), "
                              "or `model` for the study's model's own family")
        if bad := [m for m in metrics if m not in MEMBER_COLUMNS]:
            raise ConfigError(f"{at}.metrics", bad, f"metrics a population scores each member on: "
                              f"{list(MEMBER_COLUMNS)}")
    for g_key in ("generation", "vs_generation"):
        g = test.get(g_key, "last")
        if g != "last" and not (isinstance(g, int) and not isinstance(g, bool) and g >= 0):
            raise ConfigError(f"{at}.{g_key}", g, "'last' or a generation >= 0")
    for arm, g, key in compared(test, arms):
        if g > arms[arm]:
            raise ConfigError(f"{at}.{key}", g, f"a generation arm {arm} has (0..{arms[arm]}); give "
                              "vs_generation where the arms' lengths differ")
    g = test_generation(test, arms)
    if kind == "deceleration" and g < 2:
        raise ConfigError(f"{at}.generation", g, "a generation >= 2: a deceleration compares the first step with "
                          "the last, (e_1 - e_0) - (e_G - e_G-1)")
    if kind == "crossed" and g < 1:
        raise ConfigError(f"{at}.generation", g, "a generation >= 1 that every arm's home family trained")
    if kind == "scaling" and g < 1:
        raise ConfigError(f"{at}.generation", g, "a generation >= 1: at generation 0 both curves are the same "
                          "clean fits, and d is 0")
    if kind == "difference" and test.get("vs_arm", test["arm"]) == test["arm"] and "vs_generation" not in test \
            and not test.get("vs_metric") and "member" not in test:
        raise ConfigError(at, test, "a comparison of two things: another arm (vs_arm), another generation "
                          "(vs_generation) or another metric (vs_metric); this one is always 0")
    trusted = test.get("trusted_for")
    trusted = [trusted] if isinstance(trusted, str) else trusted or []
    if unknown := set(trusted) - changes:
        raise ConfigError(f"{at}.trusted_for", sorted(unknown), f"changes or kinds the calibration makes: "
                          f"{sorted(changes)}")
    for verdict in (SUPPORTED, CONTRADICTED):
        parse_rule(rule[verdict], f"{at}.rule.{verdict}")
        if uses_margin(rule[verdict]) and not isinstance(test.get("margin"), (int, float)):
            raise ConfigError(f"{at}.margin", test.get("margin"), f"a number: the rule {rule[verdict]!r} uses it")
    if rule["combine"] not in TEST_COMBINE.values():
        raise ConfigError(f"{at}.rule.combine", rule["combine"], "any (one family: some metric decides, none "
                          "against) or all (every metric)")
    if not (isinstance(rule["alpha"], (int, float)) and 0 < rule["alpha"] < 1):
        raise ConfigError(f"{at}.rule.alpha", rule["alpha"], "a family-wise level in (0, 1), e.g. 0.05")


def check_homes(claims: Mapping[str, Any], generations: Mapping[str, int], turns: Mapping[str, list[str]],
                members: Mapping[str, list[str]], model: str) -> None:
    """Once every arm's config is known (study.plan): every generation a test reads of an arm is one the arm's home
    family (the one that trained its generation 0) trained; a crossed design is two families' own loops and their
    alternations, each starting with its home; a `member` is one of the arm's population. `turns`: {arm: the
    families in turn, generation g trained by turns[g % len]}; `members`: {arm: its population's column suffixes}.
    ConfigError naming the test, the arm and the generation."""
    for name, claim in (claims or {}).items():
        for i, test in enumerate(claim["tests"]):
            at = f"study.claims.{name}.tests[{i}]"
            label = f"test {test.get('name') or i + 1!r} of claim {name}"
            for arm, g, key in compared(test, generations):
                order = turns[arm]
                by, home = order[g % len(order)], order[0]
                if by != home:
                    homes = [x for x in range(g, -1, -1) if order[x % len(order)] == home and x > 0]
                    hint = f"; compare it at a generation {home} trained, such as {homes[0]}" if homes else ""
                    raise ConfigError(f"{at}.{key}", g, f"{label}: arm {arm}'s generation {g} was trained by {by}, not "
                                      f"by its home family {home} (which trained its generation 0; its families take "
                                      f"turns {order}): a comparison there compares two families' samplers, not "
                                      f"collapse{hint}")
            if kind_of(test) == "crossed":
                _check_crossed(test, at, label, turns)
            if "member" in test:
                found = member_label(test["member"], model)
                if found not in members.get(test["arm"], []):
                    raise ConfigError(f"{at}.member", test["member"], f"{label}: a member of arm {test['arm']}'s "
                                      f"population {members.get(test['arm']) or '(it has none: chain.population)'}"
                                      + (f" (`model` is {model} here)" if test["member"] == "model" else ""))


def _check_crossed(test: Mapping[str, Any], at: str, label: str, turns: Mapping[str, list[str]]) -> None:
    via, own, mirror_via, mirror_own = crossed_arms(test)
    a, b = turns[own][0], turns[mirror_own][0]
    for arm, key, loop in ((own, "vs_arm", a), (mirror_own, "mirror.vs_arm", b)):
        if turns[arm] != [loop]:
            raise ConfigError(f"{at}.{key}", arm, f"{label}: a family's own loop (one family every generation); "
                              f"arm {arm}'s families take turns {turns[arm]}")
    if a == b:
        raise ConfigError(f"{at}.mirror.vs_arm", mirror_own, f"{label}: the other family's own loop; {own} and "
                          f"{mirror_own} are both {a}'s")
    for arm, key, home, other in ((via, "arm", a, b), (mirror_via, "mirror.arm", b, a)):
        if turns[arm][0] != home or other not in turns[arm]:
            raise ConfigError(f"{at}.{key}", arm, f"{label}: an alternation that starts with {home} (the home of its "
                              f"own loop beside it) and takes turns with {other}; arm {arm}'s families take turns "
                              f"{turns[arm]}")


def _check_scaling(test: Mapping[str, Any], at: str, arms: Mapping[str, int], names: list[str]) -> None:
    """A scaling test's two curves: `arms` and `vs_arms`, each >= 2 arms of the study (one per pool size, the
    smallest first), and no single arm or vs_arm."""
    for key in ("arm", "vs_arm"):
        if key in test:
            raise ConfigError(f"{at}.{key}", test[key], "absent in a test of kind scaling: it reads two curves, "
                              "arms and vs_arms (one arm per real pool size, smallest first)")
    for key in ("arms", "vs_arms"):
        value = test.get(key)
        if not (isinstance(value, (list, tuple)) and len(value) >= 2 and all(isinstance(a, str) for a in value)
                and len(set(value)) == len(value)):
            raise ConfigError(f"{at}.{key}", value, "a list of >= 2 different arms, one per real pool size (smallest "
                              "first): the curve whose power-law exponent the test reads")
        if bad := [a for a in value if a not in arms]:
            raise ConfigError(f"{at}.{key}", bad, f"arms of the study {names}")
    if set(test["arms"]) & set(test["vs_arms"]):
        raise ConfigError(f"{at}.vs_arms", test["vs_arms"], "arms other than `arms`: two different curves")


def _check_rule_keys(rule: Any, key: str) -> None:
    if rule is None:
        return
    if not isinstance(rule, Mapping):
        raise ConfigError(key, rule, f"a mapping with keys among {list(RULE)}")
    for k, value in rule.items():
        if k not in RULE:
            raise ConfigError(f"{key}.{k}", value, f"keys among {list(RULE)}")
