"""The verdict engine's error rates and known answers: simulated null studies for every claim shape of
claims.yaml (P(decided) <= alpha at n = 3 and 5), the same decisions from the study's scalar path and the simulation's
arrays, and/or semantics, zero spread, one-sided p, the detectable effect, separation, pre-registration, the one table
of metric facts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

from imgcollapse import metric_facts
from imgcollapse.config import CONF_DIR
from imgcollapse.verdicts import stats
from imgcollapse.verdicts.judge import judge, verdict_of
from imgcollapse.verdicts.plan import plan_hash, plan_status, register_plan
from imgcollapse.verdicts.rules import RULE, controls_level
from imgcollapse.verdicts.simulate import (
    Shape,
    crossed_chains,
    crossed_draws,
    deceleration_draws,
    decide,
    null_draws,
    null_table,
    shapes_of,
)

CLAIMS = yaml.safe_load((CONF_DIR / "study" / "claims.yaml").read_text())
SIMS = 12_000
# a simulated rate's sampling error: P(decided) at exactly alpha sits within 3 of these of it
TOLERANCE = 3 * math.sqrt(0.05 * 0.95 / SIMS)


def test_simulated_null_studies_decide_at_most_alpha_for_every_claim_shape() -> None:
    shapes = shapes_of(CLAIMS)
    assert {str(s) for s in shapes.values()} >= {"3 metrics (any)", "2 tests (or): 3 metrics (any) + 3 metrics (any)"}
    for row in null_table(shapes, ns=(3, 5), rhos=(0.0, 0.8), sims=SIMS, seed=1):
        assert row["decided"] <= 0.05 + TOLERANCE, row
        assert row["supported"] <= 0.025 + TOLERANCE, row


def test_the_simulation_catches_an_engine_without_error_control(monkeypatch: pytest.MonkeyPatch) -> None:
    """The known failure: every metric at 2.5% one-sided with no split (the engine before 0.4) decides too often."""
    monkeypatch.setattr(stats, "split_levels", lambda s, c, parts, how: (s, c))
    shape = Shape("or", ((3, "any"), (3, "any")))  # degrades
    sup, con = decide(null_draws(SIMS, 6, 3, 0.0, np.random.default_rng(2)), shape)
    assert (sup | con).mean() > 0.12  # the 11-12% "supported", and more decided


def test_where_normality_fails_the_rates_are_reported_not_promised() -> None:
    """Skewed and heavy-tailed nulls run through the same code (docs/STUDIES.md states the normality assumption)."""
    shapes = {"one": Shape("or", ((1, "any"),))}
    skewed = null_table(shapes, ns=(3,), rhos=(0.0,), sims=SIMS, seed=6, kind="skewed")[0]
    heavy = null_table(shapes, ns=(3,), rhos=(0.0,), sims=SIMS, seed=6, kind="heavy")[0]
    assert skewed["decided"] > 0.05 + TOLERANCE  # a skewed difference breaks the t-test at n = 3: the docs say so
    assert heavy["decided"] <= 0.05 + TOLERANCE  # heavy tails make it conservative


def test_a_quantised_column_whose_seeds_agree_exactly_is_never_decided() -> None:
    d = np.array([1.0, 1.0, 1.0])
    st = stats.describe(d, 0.025, 0.025)
    assert np.isnan(st["lo"]) and np.isnan(st["hi"])  # no interval: the rule cannot hold
    assert st["p_claim"] == 0.125 and st["p"] == 0.25  # the exact sign-flip p, 2^-n at best, never 0
    shape = Shape("or", ((1, "any"),))
    sup, con = decide(null_draws(SIMS, 1, 3, 0.0, np.random.default_rng(3), discrete=True), shape)
    assert (sup | con).mean() <= 0.05 + TOLERANCE


def test_bounds_are_the_textbook_one_sided_t_bounds() -> None:
    d = np.array([1.0, 2.0, 4.0, 3.0])
    st = stats.describe(d, 0.01, 0.05)
    se = d.std(ddof=1) / 2
    assert st["lo"] == pytest.approx(2.5 - scipy_stats.t.ppf(0.99, 3) * se)
    assert st["hi"] == pytest.approx(2.5 + scipy_stats.t.ppf(0.95, 3) * se)
    assert st["p_claim"] == pytest.approx(scipy_stats.ttest_1samp(d, 0, alternative="greater").pvalue)
    assert st["p"] == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue)
    assert st["lo95"] == pytest.approx(2.5 - scipy_stats.t.ppf(0.975, 3) * se)


def test_a_one_sided_p_in_the_claims_direction() -> None:
    """A significant effect against the claim has a small two-sided p but a one-sided p near 1."""
    st = stats.describe(np.array([-5.0, -5.2, -4.9, -5.1]), 0.025, 0.025)
    assert st["p"] < 0.001 and st["p_claim"] > 0.999 and st["p_against"] < 0.001


def test_levels_split_so_the_whole_keeps_its_level() -> None:
    assert stats.split_levels(0.025, 0.025, 3, "or") == (pytest.approx(0.025 / 3), 0.025)
    assert stats.split_levels(0.025, 0.025, 2, "and") == (0.025, 0.0125)
    assert stats.split_levels(0.025, 0.025, 4, "any") == (0.00625, 0.00625)


def _parts(*verdicts: str, votes: tuple[bool, ...] | None = None) -> list[dict]:
    votes = votes or (True,) * len(verdicts)
    return [{"verdict": v, "votes": b} for v, b in zip(verdicts, votes, strict=True)]


def test_and_is_a_conjunction_and_or_its_dual() -> None:
    # the README's old row: verify vs none contradicted, verify vs reward supported: the AND statement is false
    assert verdict_of(_parts("contradicted", "supported"), "and") == "contradicted"
    assert verdict_of(_parts("supported", "supported"), "and") == "supported"
    assert verdict_of(_parts("supported", "inconclusive"), "and") == "inconclusive"
    assert verdict_of(_parts("supported", "supported", votes=(True, False)), "and") == "inconclusive"  # must all vote
    assert verdict_of(_parts("contradicted", "supported"), "or") == "supported"
    assert verdict_of(_parts("contradicted", "inconclusive"), "or") == "inconclusive"
    assert verdict_of(_parts("contradicted", "contradicted"), "or") == "contradicted"
    # the dual of and: a part that cannot vote leaves an or claim open to "contradicted", as it does and's "supported"
    assert verdict_of(_parts("contradicted", "inconclusive", votes=(True, False)), "or") == "inconclusive"
    assert verdict_of(_parts("supported", "inconclusive", votes=(True, False)), "or") == "supported"
    assert verdict_of(_parts("supported", "contradicted"), "any") == "inconclusive"  # one family pointing both ways


def rows_for(arms: dict[str, list[list[float]]], metric: str = "fid") -> list[dict]:
    return [{"arm": arm, "seed": s, "generation": g, metric: v}
            for arms_seeds in [arms] for arm, seeds in arms_seeds.items() for s, curve in enumerate(seeds)
            for g, v in enumerate(curve)]


def record_for(arms: list[str], claims: dict, seeds: int = 3, generation: int = 2, signature: bool = False) -> dict:
    return {"name": "t", "study": {"claims": claims, "rule": {}},
            "chains": [{"arm": a, "seed": s, "generation": generation, "run_dir": f"{a}/seed_{s}",
                        "signature": f"sig{s}" if signature else None} for a in arms for s in range(seeds)]}


@pytest.mark.parametrize("how", ["or", "and"])
def test_the_studys_scalar_path_decides_as_the_simulations_arrays(tmp_path: Path, how: str) -> None:
    """The same draws through judge() (rows, rules, levels) and through simulate.decide(): the same verdicts."""
    rng = np.random.default_rng(4)
    claims = {"c": {"statement": "s", "combine": how, "tests": [
        {"arm": "a", "vs_arm": "b", "metrics": ["fid", "recall", "coverage"], "expect": "worse"},
        {"arm": "a", "vs_arm": "b", "metrics": ["precision", "density"], "expect": "worse"}]}}
    shape = Shape(how, ((3, "any"), (2, "any")))
    seen = set()
    for _ in range(60):
        d = rng.normal(0.8 if how == "or" else 2.5, 1.0, (5, 4))  # an effect, so that every verdict occurs
        rows = []
        for s in range(4):
            base = {"fid": 10.0, "recall": 0.5, "coverage": 0.5, "precision": 0.5, "density": 1.0}
            worse = {"fid": d[0, s], "recall": -d[1, s], "coverage": -d[2, s], "precision": -d[3, s],
                     "density": abs(d[4, s])}  # density: farther from 1 is worse, so keep d[4] >= 0
            rows += [{"arm": "a", "seed": s, "generation": 1, **{k: base[k] + worse[k] for k in base}},
                     {"arm": "b", "seed": s, "generation": 1, **base}]
        d[4] = np.abs(d[4])
        result = judge(rows, record_for(["a", "b"], claims, seeds=4, generation=1), tmp_path)["claims"]["c"]
        sup, con = decide(d[None], shape)
        expected = "supported" if sup[0] else "contradicted" if con[0] else "inconclusive"
        assert result["verdict"] == expected
        seen.add(expected)
    assert {"supported", "inconclusive"} <= seen


def test_zero_spread_with_a_nonzero_mean_is_not_supported(tmp_path: Path) -> None:
    rows = [{"arm": "t", "seed": s, "generation": g, "lost_classes": float(g)} for s in range(3) for g in range(3)]
    claims = {"c": {"statement": "classes are lost", "tests": [{"arm": "t", "metric": "lost_classes",
                                                                 "vs_generation": 0, "expect": "worse"}]}}
    claim = judge(rows, record_for(["t"], claims), tmp_path)["claims"]["c"]
    test = claim["tests"][0]
    assert test["per_seed"] == [2.0, 2.0, 2.0] and test["last"]["lo"] is None
    assert test["last"]["p_claim"] == 0.125 and claim["verdict"] == "inconclusive"
    assert "agree exactly" in claim["reason"]


def test_separation_starts_after_a_shared_generation_0_and_names_its_direction(tmp_path: Path) -> None:
    same0 = {"a": [[5, 4, 3], [5, 4.2, 3.1], [5, 3.9, 2.8]], "b": [[5, 6, 7], [5, 6.2, 7.5], [5, 6.1, 7.2]]}
    claims = {"c": {"statement": "a worse", "tests": [{"arm": "a", "vs_arm": "b", "metric": "fid",
                                                        "expect": "worse"}]}}
    shared = judge(rows_for(same0), record_for(["a", "b"], claims, signature=True), tmp_path)["claims"]["c"]
    assert shared["tests"][0]["separates_at"] == {"generation": 1, "direction": "against the claim"}
    assert shared["verdict"] == "contradicted" and shared["level"] == 0.05
    apart = {"a": [[9, 4, 3], [9.5, 4.2, 3.1], [9.2, 3.9, 2.8]], "b": same0["b"]}
    own = judge(rows_for(apart), record_for(["a", "b"], claims), tmp_path)["claims"]["c"]
    assert own["tests"][0]["separates_at"] == {"generation": 0, "direction": "as claimed"}  # gen 0 is not shared


def test_the_detectable_effect_has_the_power_it_claims() -> None:
    mde = stats.detectable(sd=1.0, n=5, level=0.025)
    rng = np.random.default_rng(5)
    d = rng.normal(mde, 1.0, (20_000, 5))
    power = (stats.describe(d, 0.025, 0.025)["lo"] > 0).mean()
    assert power == pytest.approx(0.8, abs=0.015)
    big_n = stats.detectable(sd=1.0, n=400, level=0.025)
    assert big_n == pytest.approx((1.959964 + 0.841621) / 20, rel=0.01)  # the normal approximation's answer
    assert stats.detectable(sd=0.0, n=3, level=0.025) is None


def test_a_rule_of_the_users_own_form_has_no_stated_level(tmp_path: Path) -> None:
    assert controls_level(RULE)
    assert controls_level({**RULE, "supported": "lo > -margin", "contradicted": "hi < -margin"})
    assert controls_level({**RULE, "supported": "p_claim < level_supported",
                           "contradicted": "p_against < level_contradicted"})
    assert not controls_level({**RULE, "supported": "mean > 0"})
    assert not controls_level({**RULE, "supported": "p < 0.05"})  # two-sided: true of an opposite effect too
    assert not controls_level({**RULE, "supported": "lo > -100"})  # another threshold on each side
    assert not controls_level({**RULE, "supported": "curve_lo > 0"})  # the curve one side, the last the other
    claims = {"c": {"statement": "s", "tests": [{"arm": "a", "vs_arm": "b", "metric": "fid", "expect": "worse",
                                                  "rule": {"supported": "mean > 0"}}]}}
    rows = rows_for({"a": [[1, 2]] * 3, "b": [[1, 1]] * 3})
    assert judge(rows, record_for(["a", "b"], claims, generation=1), tmp_path)["claims"]["c"]["level"] is None


def test_the_plan_is_registered_before_the_data_and_a_later_change_is_marked() -> None:
    study = {"seeds": [3, 4], "generation": 2, "arms": {"a": ["regime=replace"]}, "claims": {"c": {"tests": []}},
             "rule": {"combine": "any"}}
    digest = plan_hash(study, [])
    assert plan_hash({**study, "rule": {"combine": "or"}}, []) == digest  # an alias hashes alike
    assert plan_hash({**study, "description": "other words"}, []) == digest  # not part of the plan
    assert plan_hash({**study, "generation": 3}, []) != digest
    record = {"study": study, "common_overrides": [], "plan": register_plan({}, digest, any_data=False)}
    assert plan_status(record)[0]
    changed = {**study, "generation": 3}
    record = {"study": changed, "common_overrides": [],
              "plan": register_plan(record, plan_hash(changed, []), any_data=True)}
    ok, line = plan_status(record)
    assert not ok and "re-analysed after the data" in line
    late = {"study": study, "common_overrides": [], "plan": register_plan({}, digest, any_data=True)}
    assert not plan_status(late)[0]
    assert not plan_status({"study": study})[0]  # a study dir from before 0.4: no plan


def test_the_protocol_by_model_is_part_of_the_plan_and_an_older_registration_keeps_its_hash() -> None:
    study = {"seeds": [3], "generation": 2, "arms": {"a": ["regime=replace"]}, "claims": {}, "rule": {}}
    tuned = {**study, "overrides_by_model": {"ddpm": ["model.init=previous"]}}
    assert plan_hash({**study, "overrides_by_model": {}}, []) == plan_hash(study, [])  # none: hashed as before
    assert plan_hash(tuned, []) != plan_hash(study, [])
    assert plan_hash(tuned, [], keys=1) == plan_hash(study, [])  # a version-1 plan did not hash the protocol
    record = {"study": tuned, "common_overrides": [], "plan": register_plan({}, plan_hash(tuned, []), False)}
    assert record["plan"]["keys"] == 2 and plan_status(record)[0]
    changed = {**tuned, "overrides_by_model": {"ddpm": ["model.init=base"]}}
    assert not plan_status({**record, "study": changed})[0]  # a changed protocol is a changed plan
    # a study registered before version 2 (no `keys`) is judged by the keys it was registered under
    old = {"study": tuned, "common_overrides": [], "plan": {**register_plan({}, plan_hash(study, []), False)}}
    del old["plan"]["keys"]
    assert plan_status(old)[0]


def test_one_table_of_metric_facts_serves_everyone() -> None:
    from imgcollapse.metrics import CLASS_COLUMNS, SPACE_COLUMNS
    from imgcollapse.metrics.calibration import CHANGES
    from imgcollapse.report import metric_info

    metric_facts.check_table()
    assert {kind for kind, *_ in CHANGES.values()} == set(metric_facts.KINDS)
    for column in (*SPACE_COLUMNS, *CLASS_COLUMNS):
        assert metric_facts.fact(column) is not None, column
    assert metric_info.METRICS is metric_facts.FACTS
    assert metric_facts.badness("tail_ratio", 0.8) > metric_facts.badness("tail_ratio", 1.3)  # falling is worse
    assert metric_facts.badness("density", 1.3) == pytest.approx(metric_facts.badness("density", 0.7))
    assert metric_facts.worse("recall_class_3") == metric_facts.LOWER and metric_facts.worse("fid_vae") == "higher"
    assert metric_facts.worse("fid_inception") == metric_facts.HIGHER and metric_facts.worse("nonesuch") is None
    assert metric_facts.worse("fid_sd") is None and metric_facts.worse("recall_hi") is None  # bookkeeping columns


def test_the_null_study_is_an_a_a_comparison() -> None:
    """study=null: two arms of one config whose chains differ only in their seeds (pairing by seed index)."""
    from imgcollapse.study import load_study, plan, split_args

    study_args, _, common = split_args(["study=null"])
    study, raw = load_study(study_args)
    chains = plan(study, common, threads=1)
    by_arm = {c.arm: c for c in chains if c.seed == 0}
    strip = [o for o in by_arm["a"].overrides if not o.startswith("seed=")]
    assert strip == [o for o in by_arm["b"].overrides if not o.startswith("seed=")]
    assert "seed=0" in by_arm["a"].overrides and "seed=1000" in by_arm["b"].overrides
    assert by_arm["b"].shares_with is None  # its own generation 0: its own streams from the start
    assert raw["null_study"] is True  # its report states the observed false-decision rate
    assert {str(s) for s in shapes_of(raw).values()} >= {"1 metric", "3 metrics (any)"}


def test_the_sign_test_is_exact_and_free_of_the_distribution() -> None:
    st = stats.describe(np.array([[0.3, 1.2, 0.1, 5.0, 0.2, 0.4], [0.3, -1.2, 0.1, 5.0, 0.2, 0.0]]), 0.025, 0.025)
    assert st["p_sign_claim"][0] == pytest.approx(1 / 64)  # 6 of 6 positive
    assert st["p_sign_claim"][1] == pytest.approx(scipy_stats.binomtest(4, 5, alternative="greater").pvalue)
    shape_draws = null_draws(SIMS, 1, 8, 0.0, np.random.default_rng(7), kind="skewed")[:, 0, :]
    sign = stats.sign_test(shape_draws)
    # the skewed null's median is below its mean of 0: test the median's null instead, d − median
    centred = stats.sign_test(shape_draws - (1.0 - np.exp(0.5)))
    assert (centred["p_sign_claim"] < 0.025).mean() <= 0.025 + TOLERANCE
    assert (sign["p_sign_against"] < 0.025).mean() > 0.025  # a shifted median is what the sign test sees


def test_a_null_studys_report_counts_what_it_decided_with_an_exact_interval() -> None:
    from imgcollapse.report.study import false_decisions

    claim = {"verdict": "inconclusive", "groups": [{"votes": True, "verdict": "inconclusive"}],
             "tests": [{"votes": True, "verdict": "inconclusive"}, {"votes": False, "verdict": "supported"}]}
    decided = {**claim, "verdict": "supported", "groups": [{"votes": True, "verdict": "supported"}],
               "tests": [{"votes": True, "verdict": "supported"}]}
    found = false_decisions({"claims": {"a": claim, "b": claim, "c": claim, "d": decided}})
    assert found["claims"]["decided"] == 1 and found["claims"]["of"] == 4
    assert found["metrics"] == pytest.approx({"decided": 1, "of": 4, "rate": 0.25, "lo": 0.00631, "hi": 0.80588},
                                             abs=1e-4)  # Clopper-Pearson for 1 of 4; a non-voting metric not counted


# Test kinds: a crossed design (source family × learner family) and a deceleration --------------------------------
CROSSED = Shape("any", ((3, "any"),))  # claim other_family: one two-sided test of three metrics


def test_a_worse_family_cancels_in_a_crossed_design_and_is_decided_at_most_alpha() -> None:
    """No interaction, family B adds 20 times A's error every generation (a far worse sampler whoever it learns
    from): d is 0 in expectation and the two-sided claim is decided at most alpha of the time. One scale per family
    (the obvious alternative) turns that main effect into a 'faster' almost always."""
    rng = np.random.default_rng(11)
    for n in (3, 5):
        for rho in (0.0, 0.8):
            d = crossed_draws(SIMS, 3, n, rng, main=19.0, rho=rho)
            assert abs(d.mean()) < 0.01
            sup, con = decide(d, CROSSED)
            assert (sup | con).mean() <= 0.05 + TOLERANCE, (n, rho)
            assert sup.mean() <= 0.025 + TOLERANCE and con.mean() <= 0.025 + TOLERANCE
    deltas, excess_a, excess_b = crossed_chains(4000, 3, 3, rng, main=19.0)
    per_family = 0.5 * ((deltas[0] - deltas[1]) / excess_a.mean(-1, keepdims=True)
                        + (deltas[2] - deltas[3]) / excess_b.mean(-1, keepdims=True))
    sup, _ = decide(per_family, CROSSED)
    assert sup.mean() > 0.5  # the known failure the single scale avoids


@pytest.mark.parametrize(("interaction", "verdict"), [(1.0, "supported"), (-1.0, "contradicted")])
def test_a_true_interaction_is_found_with_its_sign(interaction: float, verdict: str) -> None:
    rng = np.random.default_rng(12)
    d = crossed_draws(4000, 3, 3, rng, main=4.0, interaction=interaction, noise=0.2)
    assert d.mean() == pytest.approx(2 * interaction / 3.0, rel=0.05)  # 2 cross steps, in units of (1 + 5) / 2
    sup, con = decide(d, CROSSED)
    assert (sup if verdict == "supported" else con).mean() > 0.9 and (con if verdict == "supported" else sup).mean() \
        < 0.01


def crossed_rows(main: float, interaction: float, seeds: int = 3, generation: int = 2, noise: float = 0.05,
                 seed: int = 13) -> tuple[list[dict], dict]:
    """study.csv rows of the four chains of a crossed design (families A = gmm, B = other) by the additive model of
    simulate.crossed_chains, FID 4 at the real floor; and each chain's floors by run dir."""
    rng = np.random.default_rng(seed)
    cost = {"gmm": 1.0, "other": 1.0 + main}
    arms = {"via": ["gmm", "other"], "self": ["gmm"], "mirror_via": ["other", "gmm"], "mirror_self": ["other"]}
    rows = []
    for arm, turns in arms.items():
        for s in range(seeds):
            e = cost[turns[0]] + noise * rng.standard_normal()
            for g in range(generation + 1):
                if g:
                    learner, source = turns[g % len(turns)], turns[(g - 1) % len(turns)]
                    e += cost[learner] + interaction * (learner != source) + noise * rng.standard_normal()
                rows.append({"arm": arm, "seed": s, "generation": g, "fid": 4.0 + e, "family": turns[g % len(turns)]})
    return rows, {f"{arm}/seed_{s}": {"fid": 4.0} for arm in arms for s in range(seeds)}


CROSSED_CLAIM = {"q": {"statement": "does another family's output change collapse?", "two_sided": ["faster", "slower"],
                       "tests": [{"name": "interaction", "kind": "crossed", "arm": "via", "vs_arm": "self",
                                  "mirror": {"arm": "mirror_via", "vs_arm": "mirror_self"}, "metric": "fid"}]}}


def test_the_study_reads_a_crossed_design_from_its_rows(tmp_path: Path) -> None:
    arms = ["via", "self", "mirror_via", "mirror_self"]
    rows, floors = crossed_rows(main=9.0, interaction=0.0)
    claim = judge(rows, record_for(arms, CROSSED_CLAIM), tmp_path, floors)["claims"]["q"]
    test = claim["tests"][0]
    assert test["kind"] == "crossed" and test["generation"] == 2 and test["scale"] == pytest.approx(5.5, abs=0.1)
    assert abs(test["last"]["mean"]) < 0.1 and claim["verdict"] == "inconclusive"  # 18 FID of main effect, d ≈ 0
    assert "units of the two families' mean generation-0 excess fid" in test["scale_note"]
    rows, floors = crossed_rows(main=9.0, interaction=1.5)
    claim = judge(rows, record_for(arms, CROSSED_CLAIM), tmp_path, floors)["claims"]["q"]
    assert claim["verdict"] == "differs" and claim["direction"] == "faster" and claim["level"] == 0.05
    assert claim["tests"][0]["last"]["mean"] == pytest.approx(3.0 / 5.5, abs=0.05)  # 2 x 1.5 FID, scale (1 + 10) / 2
    assert "d > 0 (faster) in 3 of 3 seeds" in claim["reason"]
    from imgcollapse.report.study import claims_markdown

    table = claims_markdown({"claims": {"q": claim}})
    assert "**differs (faster)** (5% (two-sided))" in table and "(via − self) + (mirror_via − mirror_self)" in table
    rows, floors = crossed_rows(main=9.0, interaction=-1.5)
    claim = judge(rows, record_for(arms, CROSSED_CLAIM), tmp_path, floors)["claims"]["q"]
    assert (claim["verdict"], claim["direction"]) == ("differs", "slower")
    without = judge(rows, record_for(arms, CROSSED_CLAIM), tmp_path)["claims"]["q"]["tests"][0]  # no run.json: raw FID
    assert without["scale"] == 1.0 and without["last"]["mean"] == pytest.approx(-3.0, abs=0.3)


def test_a_crossed_design_reads_the_same_verdicts_as_the_simulation(tmp_path: Path) -> None:
    """The scalar path (rows → judge) and the arrays (stats.interaction → simulate.decide) on the same draws: the same
    d and the same verdicts."""
    arms = ["via", "self", "mirror_via", "mirror_self"]
    seen = set()
    for k in range(60):
        rows, floors = crossed_rows(main=4.0, interaction=0.6 * (k % 3 - 1), noise=0.5, seed=100 + k)
        claim = judge(rows, record_for(arms, CROSSED_CLAIM), tmp_path, floors)["claims"]["q"]
        value = {(r["arm"], r["seed"], r["generation"]): r["fid"] for r in rows}
        deltas = [np.array([value[a, s, 2] - value[a, s, 0] for s in range(3)]) for a in arms]
        scale = np.mean([value[a, s, 0] - 4.0 for a in ("self", "mirror_self") for s in range(3)])
        d = stats.interaction(*deltas, scale=scale)
        assert claim["tests"][0]["per_seed"] == pytest.approx(list(d))
        sup, con = decide(d[None, None, :], Shape("any", ((1, "any"),)))
        expected = ("differs", "faster") if sup[0] else ("differs", "slower") if con[0] else ("inconclusive", None)
        assert (claim["verdict"], claim.get("direction")) == expected
        seen.add(expected)
    assert len(seen) == 3


def deceleration_rows(curve: list[float], seeds: int = 3, noise: float = 0.05, seed: int = 14) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"arm": "acc", "seed": s, "generation": g, "fid": v + noise * rng.standard_normal()}
            for s in range(seeds) for g, v in enumerate(curve)]


BOUNDED = {"b": {"statement": "bounded", "tests": [{"name": "decelerates", "kind": "deceleration", "arm": "acc",
                                                     "metric": "fid"}]}}


def test_deceleration_tells_bounded_from_linear_growth(tmp_path: Path) -> None:
    linear = judge(deceleration_rows([5 + 2 * g for g in range(11)]), record_for(["acc"], BOUNDED, generation=10),
                   tmp_path)["claims"]["b"]
    assert linear["verdict"] != "supported" and abs(linear["tests"][0]["last"]["mean"]) < 0.3
    saturating = [5 + 6 * (1 - math.exp(-g)) for g in range(11)]
    bounded = judge(deceleration_rows(saturating), record_for(["acc"], BOUNDED, generation=10), tmp_path)["claims"]["b"]
    test = bounded["tests"][0]
    assert bounded["verdict"] == "supported" and test["generation"] == 10
    assert test["last"]["mean"] == pytest.approx((saturating[1] - saturating[0]) - (saturating[10] - saturating[9]),
                                                 abs=0.2)
    recall = [{**r, "recall": 1 - r.pop("fid") / 20} for r in deceleration_rows(saturating)]  # lower is worse
    claim = {"b": {**BOUNDED["b"], "tests": [{**BOUNDED["b"]["tests"][0], "metric": "recall"}]}}
    assert judge(recall, record_for(["acc"], claim, generation=10), tmp_path)["claims"]["b"]["verdict"] == "supported"
    accelerating = judge(deceleration_rows([5 + 0.2 * g * g for g in range(11)]),
                         record_for(["acc"], BOUNDED, generation=10), tmp_path)["claims"]["b"]
    assert accelerating["verdict"] == "contradicted"


def test_linear_growth_is_called_bounded_at_most_alpha_of_the_time() -> None:
    rng = np.random.default_rng(15)
    one = Shape("or", ((1, "any"),))
    for n in (3, 5):
        sup, con = decide(deceleration_draws(SIMS, 1, n, rng, generation=10, growth="linear", rate=3.0), one)
        assert sup.mean() <= 0.025 + TOLERANCE and (sup | con).mean() <= 0.05 + TOLERANCE
    sup, _ = decide(deceleration_draws(4000, 1, 3, rng, generation=10, growth="saturating", noise=0.2), one)
    assert sup.mean() > 0.9


def test_the_plan_refuses_a_generation_the_home_family_did_not_train() -> None:
    from imgcollapse.errors import ConfigError
    from imgcollapse.verdicts.rules import check_homes

    turns = {"self": ["gmm"], "alt": ["gmm", "other"], "other_self": ["other"], "other_alt": ["other", "gmm"],
             "pool": ["population"]}
    generations = dict.fromkeys(turns, 3)
    plain = {"c": {"statement": "s", "tests": [{"name": "alt vs own", "arm": "alt", "vs_arm": "self",
                                                 "metric": "fid", "expect": "worse"}]}}
    with pytest.raises(ConfigError, match=r"study\.claims\.c\.tests\[0\]\.generation=3 .*test 'alt vs own'.*arm "
                                          r"alt's generation 3 was trained by other, not by its home family gmm.*such "
                                          r"as 2"):
        check_homes(plain, generations, turns, {}, "gmm")
    check_homes({"c": {"tests": [{**plain["c"]["tests"][0], "generation": 2}]}}, generations, turns, {}, "gmm")
    crossed = {"q": {"tests": [{"kind": "crossed", "arm": "alt", "vs_arm": "self", "metric": "fid",
                                "mirror": {"arm": "other_alt", "vs_arm": "other_self"}}]}}
    with pytest.raises(ConfigError, match=r"arm alt's generation 3 was trained by other"):
        check_homes(crossed, generations, turns, {}, "gmm")  # `last`: 3, odd
    crossed["q"]["tests"][0]["generation"] = 2
    check_homes(crossed, generations, turns, {}, "gmm")
    same = {"q": {"tests": [{**crossed["q"]["tests"][0], "mirror": {"arm": "other_alt", "vs_arm": "self2"}}]}}
    with pytest.raises(ConfigError, match=r"mirror\.vs_arm.*the other family's own loop; self and self2 are both"):
        check_homes(same, {**generations, "self2": 3}, {**turns, "self2": ["gmm"]}, {}, "gmm")
    swapped = {"q": {"tests": [{**crossed["q"]["tests"][0], "arm": "other_alt", "mirror": {"arm": "alt",
                                                                                         "vs_arm": "other_self"}}]}}
    with pytest.raises(ConfigError, match=r"tests\[0\]\.arm='other_alt'.*an alternation that starts with gmm"):
        check_homes(swapped, generations, turns, {}, "gmm")
    decelerating = {"b": {"tests": [{"kind": "deceleration", "arm": "alt", "metric": "fid"}]}}
    with pytest.raises(ConfigError, match=r"arm alt's generation 1 was trained by other"):  # its first step's end
        check_homes(decelerating, generations, turns, {}, "gmm")
    member = {"m": {"tests": [{"arm": "pool", "member": "model", "vs_arm": "self", "metric": "fid",
                               "expect": "worse"}]}}
    check_homes(member, generations, turns, {"pool": ["gmm", "other"]}, "gmm")
    with pytest.raises(ConfigError, match=r"member.*a member of arm pool's population \['vae', 'other'\].*`model` is "
                                          r"gmm"):
        check_homes(member, generations, turns, {"pool": ["vae", "other"]}, "gmm")


def test_a_population_members_column_is_read_against_the_other_arm(tmp_path: Path) -> None:
    rows = [{"arm": "pool", "seed": s, "generation": g, "fid": 50.0, "fid_vae": 10 + 3 * g + 0.1 * s,
             "fid_other": 40.0} for s in range(3) for g in range(3)]
    rows += [{"arm": "self", "seed": s, "generation": g, "fid": 10 + 2 * g} for s in range(3) for g in range(3)]
    claims = {"m": {"statement": "s", "two_sided": ["faster", "slower"], "tests": [
        {"arm": "pool", "member": "model", "vs_arm": "self", "metric": "fid", "change": True, "expect": "worse"}]}}
    record = {**record_for(["pool", "self"], claims), "model": "vae"}
    claim = judge(rows, record, tmp_path)["claims"]["m"]
    test = claim["tests"][0]
    assert test["metric"] == "fid_vae" and test["vs_metric"] == "fid" and test["difference"] == "fid_vae − fid"
    assert test["per_seed"] == pytest.approx([2.0, 2.0, 2.0])  # +6 in the pool against +4 alone
    assert "fid_vae" in claim["reason"]


def test_a_comparison_at_the_same_generation_reads_the_last_both_arms_have(tmp_path: Path) -> None:
    """An arm may run longer than the arm it is compared with (its own horizon, for another test)."""
    from imgcollapse.verdicts.rules import check_claims

    claims = {"c": {"statement": "s", "tests": [{"arm": "long", "vs_arm": "short", "metric": "fid",
                                                 "expect": "better"}]}}
    check_claims(claims, {}, {"long": 10, "short": 3})
    rows = rows_for({"long": [[5 + g for g in range(11)]] * 3, "short": [[5, 7, 9, 11]] * 3})
    record = {**record_for(["short"], claims, generation=3)}
    record["chains"] += [{**c, "arm": "long", "generation": 10, "run_dir": f"long/seed_{c['seed']}"}
                         for c in record["chains"]]
    test = judge(rows, record, tmp_path)["claims"]["c"]["tests"][0]
    assert (test["generation"], test["vs_generation"]) == (3, 3) and test["per_seed"] == [3, 3, 3]


def test_an_arms_own_horizon_is_part_of_the_plan() -> None:
    study = {"seeds": [3], "generation": {"gmm": 3}, "arms": {"a": {"overrides": ["regime=accumulate"],
                                                                  "generation": {"gmm": 10}}}, "claims": {}}
    assert plan_hash(study, []) != plan_hash({**study, "arms": {"a": {"overrides": ["regime=accumulate"],
                                                                      "generation": {"gmm": 11}}}}, [])


def test_a_two_sided_claims_tests_must_point_one_way() -> None:
    """Its words read the sign of d in every test: a test whose d > 0 means "better" would invert them."""
    from imgcollapse.errors import ConfigError
    from imgcollapse.verdicts.rules import check_claims

    tests = [{"arm": "a", "vs_arm": "b", "metric": "fid", "expect": "worse"},
             {"arm": "a", "vs_arm": "b", "metric": "recall", "expect": "better"}]
    claims = {"q": {"statement": "s", "two_sided": ["faster", "slower"], "tests": tests}}
    with pytest.raises(ConfigError, match=r"study\.claims\.q\.tests.*one `expect` for every test"):
        check_claims(claims, {}, {"a": 2, "b": 2})
    check_claims({"q": {**claims["q"], "tests": [tests[0], {**tests[1], "expect": "worse"}]}}, {}, {"a": 2, "b": 2})
