"""Studies: the verdict rule on constructed rows, the paired statistics, the study config's checks, and a real smoke
study (GMM, 3 arms × 2 seeds × 2 generations) whose shared generations 0 are bit-identical to unshared ones and
which, killed part-way, resumes to the same claims.json."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import STUDY, run_cli, study

from imgcollapse.errors import ConfigError
from imgcollapse.verdicts.judge import judge, t_interval
from imgcollapse.verdicts.rules import check_claims, evaluate_rule, parse_rule

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

# Constructed rows ------------------------------------------------------------------------------------------------


def rows_for(arms: dict[str, list[list[float]]], metric: str = "fid") -> list[dict]:
    """{arm: [per seed: [value at generation 0, 1, ...]]} as study.csv rows."""
    return [{"arm": arm, "seed": s, "generation": g, metric: v}
            for arm, seeds in arms.items() for s, curve in enumerate(seeds) for g, v in enumerate(curve)]


def record_for(arms: list[str], claims: dict, generation: int = 2, rule: dict | None = None) -> dict:
    return {"name": "t", "study": {"claims": claims, "rule": rule or {}},
            "chains": [{"arm": a, "seed": s, "generation": generation, "run_dir": f"{a}/seed_{s}"}
                       for a in arms for s in range(3)]}


BETTER = {"c": {"statement": "a beats b", "tests": [{"arm": "a", "vs_arm": "b", "metric": "fid", "expect": "better"}]}}


def test_a_clear_difference_is_supported(tmp_path: Path) -> None:
    rows = rows_for({"a": [[5, 6, 7], [5, 6.5, 7.5], [5, 5.5, 6.8]], "b": [[5, 20, 40], [5, 22, 38], [5, 19, 41]]})
    claim = judge(rows, record_for(["a", "b"], BETTER), tmp_path)["claims"]["c"]
    test = claim["tests"][0]
    assert claim["verdict"] == "supported"
    assert test["last"]["n"] == 3
    assert test["per_seed"] == pytest.approx([33, 30.5, 34.2])  # b − a at the last generation: lower FID is better
    assert test["last"]["lo"] > 0 and test["curve"]["lo"] > 0
    assert test["separates_at"] == {"generation": 1, "direction": "as claimed"}  # descriptive, with its direction
    assert claim["level"] == 0.05 and "3 of 3 seeds" in claim["reason"]


def test_identical_arms_are_inconclusive_and_the_reverse_contradicted(tmp_path: Path) -> None:
    same = [[5, 20, 40], [5, 22, 38], [5, 19, 41]]
    claim = judge(rows_for({"a": same, "b": same}), record_for(["a", "b"], BETTER), tmp_path)["claims"]["c"]
    assert claim["verdict"] == "inconclusive"
    assert claim["tests"][0]["last"]["mean"] == 0 and claim["tests"][0]["separates_at"] is None
    worse = rows_for({"b": [[5, 6, 7], [5, 6.5, 7.5], [5, 5.5, 6.8]], "a": same})
    assert judge(worse, record_for(["a", "b"], BETTER), tmp_path)["claims"]["c"]["verdict"] == "contradicted"


def test_a_noisy_difference_is_inconclusive(tmp_path: Path) -> None:
    rows = rows_for({"a": [[5, 6, 30], [5, 6, 10], [5, 6, 50]], "b": [[5, 6, 31], [5, 6, 40], [5, 6, 12]]})
    claim = judge(rows, record_for(["a", "b"], BETTER), tmp_path)["claims"]["c"]
    assert claim["verdict"] == "inconclusive"
    assert claim["tests"][0]["last"]["lo"] < 0 < claim["tests"][0]["last"]["hi"]


def test_the_rule_is_the_configs(tmp_path: Path) -> None:
    """The same numbers under a stricter rule written in the study's config: inconclusive."""
    rows = rows_for({"a": [[5, 6, 7], [5, 6.5, 7.5], [5, 5.5, 6.8]], "b": [[5, 20, 40], [5, 22, 38], [5, 19, 41]]})
    strict = {"supported": "lo > 50", "contradicted": "hi < 0"}
    claim = judge(rows, record_for(["a", "b"], BETTER, rule=strict), tmp_path)["claims"]["c"]
    assert claim["verdict"] == "inconclusive"
    margin = {"c": {"statement": "a stays within 50% of its generation 0", "tests": [
        {"arm": "a", "metric": "fid", "vs_generation": 0, "relative": True, "expect": "better", "margin": 0.5,
         "rule": {"supported": "lo > -margin", "contradicted": "hi < -margin"}}]}}
    bounded = judge(rows, record_for(["a", "b"], margin), tmp_path)["claims"]["c"]
    assert bounded["tests"][0]["per_seed"] == pytest.approx([-0.4, -0.5, -0.36])  # FID +40%, +50%, +36%
    assert bounded["verdict"] == "inconclusive"  # the interval [-0.60, -0.24] straddles the margin
    small = rows_for({"a": [[5, 6, 5.5], [5, 6, 5.6], [5, 6, 5.4]], "b": [[5, 6, 9]] * 3})
    assert judge(small, record_for(["a", "b"], margin), tmp_path)["claims"]["c"]["verdict"] == "supported"
    large = rows_for({"a": [[5, 6, 9.5], [5, 6, 9.6], [5, 6, 9.4]], "b": [[5, 6, 9]] * 3})
    assert judge(large, record_for(["a", "b"], margin), tmp_path)["claims"]["c"]["verdict"] == "contradicted"


def test_change_since_generation_0_compares_two_metrics(tmp_path: Path) -> None:
    """Rare content forgotten first: the tail's recall falls more than the head's, in the same arm."""
    rows = [{"arm": "t", "seed": s, "generation": g, "recall_tail": 0.9 - (0.3 + 0.01 * s) * g,
             "recall_head": 0.9 - 0.05 * g} for s in range(3) for g in range(3)]
    claims = {"c": {"statement": "tail first", "tests": [{"arm": "t", "metric": "recall_tail",
                                                           "vs_metric": "recall_head", "change": True,
                                                           "expect": "lower"}]}}
    claim = judge(rows, record_for(["t"], claims), tmp_path)["claims"]["c"]
    assert claim["tests"][0]["per_seed"] == pytest.approx([0.5, 0.52, 0.54])
    assert claim["verdict"] == "supported"


def _calibration_entry(kind: str, curves: dict[str, list[float]]) -> dict:
    from imgcollapse.metrics.calibration import verdict

    return {"kind": kind, "metrics": {c: {"values": v, "noise_sd": 0.01, "verdict": verdict(v, 0.01, c)}
                                      for c, v in curves.items()}}


def test_a_metric_the_calibration_calls_blind_or_unspecific_does_not_vote(tmp_path: Path) -> None:
    (tmp_path / "a" / "seed_0").mkdir(parents=True)
    up, flat = [0, 1, 2, 3, 4, 5.0], [0.9] * 6
    calibration = {"changes": {  # fid_mean_within sees blur only; recall sees contraction only; fid_mean both
        "blur": _calibration_entry("distortion", {"fid": up, "fid_mean_within": up, "recall": flat,
                                                  "fid_mean": [0, .5, 1, 1.5, 2, 2.5]}),
        "contract": _calibration_entry("contraction", {"fid": up, "fid_mean_within": [0] * 6,
                                                       "recall": [.9, .8, .7, .6, .5, .4],
                                                       "fid_mean": [0, .6, 1.2, 1.8, 2.4, 3.0]})}}
    (tmp_path / "a" / "seed_0" / "calibration.json").write_text(json.dumps(calibration))
    rows = rows_for({"a": [[5, 20], [5, 21], [5, 19]]}, "fid_mean_within")
    for r, extra in zip(rows, rows_for({"a": [[5, 20], [5, 23], [5, 19]]}, "fid_mean"), strict=True):
        r["fid_mean"] = extra["fid_mean"]
    rows += rows_for({"a": [[0.9, 0.95], [0.9, 0.96], [0.9, 0.97]]}, "recall")
    claims = {"c": {"statement": "distortion", "tests": [{"arm": "a", "metrics": ["fid_mean_within", "fid_mean",
                                                                                  "recall"], "vs_generation": 0,
                                                          "expect": "worse", "trusted_for": "distortion"}]}}
    claim = judge(rows, record_for(["a"], claims, generation=1), tmp_path)["claims"]["c"]
    within, mean, recall = claim["tests"]
    assert within["votes"] and within["verdict"] == "supported"
    assert within["level_supported"] == 0.025  # the only voting metric: no split
    assert not mean["votes"] and "not specific" in mean["trust_note"]  # moves more with contraction
    assert not recall["votes"] and recall["verdict"] == "contradicted"  # shown, but blind to blur
    assert claim["verdict"] == "supported"


def test_t_interval_matches_the_textbook() -> None:
    st = t_interval([1.0, 2.0, 3.0])
    assert st["mean"] == 2 and st["sd"] == 1
    assert st["hi"] - st["mean"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert t_interval([2.0])["lo"] is None  # one seed: no interval
    assert t_interval([0.0, 0.0])["p"] == 1.0


@pytest.mark.parametrize(("rule", "bad"), [("lo > 0 or __import__('os')", "comparisons of"), ("x > 0", "'x'"),
                                           ("lo >", "a comparison")])
def test_a_bad_rule_is_refused_naming_the_key(rule: str, bad: str) -> None:
    claims = {"c": {"statement": "s", "tests": [{"arm": "a", "vs_arm": "b", "metric": "fid", "expect": "better",
                                                  "rule": {"supported": rule}}]}}
    with pytest.raises(ConfigError, match=r"study\.claims\.c\.tests\[0\]\.rule\.supported") as e:
        check_claims(claims, {}, {"a": 2, "b": 2})
    assert bad in str(e.value)


@pytest.mark.parametrize(("test", "match"), [
    ({"arm": "a", "vs_arm": "nope", "metric": "fid", "expect": "better"}, r"vs_arm.*one of the study's arms"),
    ({"arm": "a", "vs_arm": "short", "metric": "fid", "expect": "better", "generation": 4},
     r"vs_generation=4.*arm short has \(0..2\)"),  # `last` reads the last generation both arms have
    ({"arm": "a", "metric": "fid", "expect": "worse"}, r"always 0"),
    ({"arm": "a", "vs_arm": "b", "metric": "my_score", "expect": "worse"}, r"higher or lower"),
    ({"arm": "a", "vs_arm": "b", "metric": "fid", "expect": "worse", "trusted_for": "blurr"}, r"trusted_for.*blur"),
    ({"arm": "a", "vs_arm": "b", "metric": "fid", "expect": "worse", "rule": {"supported": "lo > margin"}},
     r"margin.*a number"),
    ({"arm": "a", "vs_arm": "b", "metric": "fid", "expect": "worse", "rule": {"suported": "lo > 0"}},
     r"rule\.suported"),
    ({"arm": "a", "vs_arm": "b", "metric": "fid", "expect": "worse", "rule": {"supported": "lo"}},
     r"a rule is a comparison"),
    ({"kind": "crosed", "arm": "a", "vs_arm": "b", "metric": "fid"}, r"kind.*one of \['difference', 'crossed'"),
    ({"kind": "crossed", "arm": "a", "vs_arm": "b", "metric": "fid"}, r"mirror.*\{arm: B via A, vs_arm"),
    ({"kind": "crossed", "arm": "a", "vs_arm": "b", "mirror": {"arm": "a", "vs_arm": "short"}, "metric": "fid"},
     r"four different arms"),
    ({"kind": "crossed", "arm": "a", "vs_arm": "b", "mirror": {"arm": "c", "vs_arm": "short"}, "metric": "fid",
      "expect": "worse"}, r"expect.*absent in a test of kind crossed"),
    ({"kind": "crossed", "arm": "a", "vs_arm": "b", "mirror": {"arm": "c", "vs_arm": "short"}, "metric": "fid",
      "generation": 4}, r"generation=4.*arm short has \(0..2\)"),
    ({"kind": "crossed", "arm": "a", "vs_arm": "b", "mirror": {"arm": "c", "vs_arm": "d"}, "metric": "my_score"},
     r"metrics.*which way is worse is not known for 'my_score'"),
    ({"kind": "deceleration", "arm": "a", "vs_arm": "b", "metric": "fid"}, r"vs_arm.*reads one arm's own curve"),
    ({"kind": "deceleration", "arm": "a", "metric": "fid", "vs_generation": 0}, r"vs_generation.*absent"),
    ({"kind": "deceleration", "arm": "a", "metric": "fid", "generation": 1}, r"generation=1.*a generation >= 2"),
    ({"arm": "a", "member": "model", "vs_arm": "b", "metric": "fid_mean_within", "expect": "worse"},
     r"metrics.*a population scores each member on"),
])
def test_a_bad_test_is_refused_when_the_study_loads(test: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_claims({"c": {"statement": "s", "tests": [test]}}, {}, {"a": 5, "b": 5, "c": 5, "d": 5, "short": 2})


def test_best_at_1_metrics_count_the_distance_from_1(tmp_path: Path) -> None:
    """density 1.3 is as far from real as 0.7: an arm that drifts above 1 is worse, not better."""
    rows = rows_for({"a": [[1.0, 1.3], [1.0, 1.35], [1.0, 1.25]], "b": [[1.0, 1.0], [1.0, 1.02], [1.0, 0.98]]},
                    "density")
    claims = {"c": {"statement": "a drifts", "tests": [{"arm": "a", "vs_arm": "b", "metric": "density",
                                                         "expect": "worse"}]}}
    claim = judge(rows, record_for(["a", "b"], claims, generation=1), tmp_path)["claims"]["c"]
    assert claim["tests"][0]["per_seed"] == pytest.approx([0.3, 0.33, 0.23])
    assert claim["verdict"] == "supported"


def test_a_missing_value_never_makes_a_rule_true() -> None:
    tree = parse_rule("not lo > 0", "k")
    assert evaluate_rule(tree, {"lo": None}) is False  # unknown, not True
    assert evaluate_rule(tree, {"lo": -1.0}) is True
    assert evaluate_rule(parse_rule("lo > 0 or hi < 0", "k"), {"lo": None, "hi": -1.0}) is True


SHIPPED_STUDIES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "imgcollapse" / "conf" / "study")
                         .glob("*.yaml"))


def test_the_papers_studies_ship() -> None:
    assert {"claims", "smoke", "gerstgrasser", "kazdan", "bertrand", "feng", "mad", "shumailov", "null_aa"} <= \
        set(SHIPPED_STUDIES)


@pytest.mark.parametrize("name", SHIPPED_STUDIES)
def test_every_shipped_study_plans(name: str) -> None:
    """Every study in conf/study/ loads, and every arm of it composes into a valid chain config (one test per
    study: the workers share them out)."""
    from imgcollapse.study import load_study, plan, seed_list

    study, _ = load_study([f"study={name}"])
    chains = plan(study, [], threads=1)
    assert len(chains) == len(study.arms) * len(seed_list(study.seeds)), name


def test_the_claims_study_shares_generation_0_where_it_is_the_same_fit() -> None:
    from imgcollapse.study import load_study, plan, seed_list

    claims, _ = load_study(["study=claims"])
    assert seed_list(claims.seeds) == [3, 4, 5]  # the horizons were chosen on seeds 0-2: none of them is reported
    by_arm = {c.arm: c for c in plan(claims, ["model=gmm"], threads=1) if c.seed == 3}
    # the GMM has no compute budget: its growing-compute arm is plain accumulate, and shares generation 0
    assert "regime=accumulate" in by_arm["accumulate_growing"].overrides
    assert by_arm["accumulate_growing"].shares_with == "self/seed_3"
    assert by_arm["real10"].shares_with == by_arm["accumulate_fixed"].shares_with == "self/seed_3"
    # curated arms train the same model at generation 0: they adopt it and sample their own
    assert by_arm["verify"].shares_with == by_arm["reward"].shares_with == "self/seed_3"
    assert by_arm["longtail"].shares_with is None  # other data
    # the open question is its own study (its arms train from scratch): no arm of it is left here
    assert set(by_arm) == {"self", "real10", "accumulate_growing", "accumulate_fixed", "verify", "reward", "longtail"}
    assert not {"other_family", "other_family_pool"} & set(claims.claims)


def test_a_two_sided_claim_names_its_directions_and_joins_its_tests_as_one_family() -> None:
    test = {"arm": "a", "vs_arm": "b", "metric": "fid", "expect": "worse"}
    check_claims({"q": {"statement": "s", "two_sided": ["faster", "slower"], "tests": [test]}}, {}, {"a": 2, "b": 2})
    with pytest.raises(ConfigError, match=r"two_sided.*two words"):
        check_claims({"q": {"statement": "s", "two_sided": ["faster"], "tests": [test]}}, {}, {"a": 2, "b": 2})
    with pytest.raises(ConfigError, match=r"combine.*absent in a two-sided claim"):
        check_claims({"q": {"statement": "s", "two_sided": ["faster", "slower"], "combine": "and", "tests": [test]}},
                     {}, {"a": 2, "b": 2})


def test_a_study_protocol_by_model_reaches_every_arm_before_its_own_overrides() -> None:
    from imgcollapse.study import StudyConfig, arms_of, check_study

    study = StudyConfig(name="p", generation=2, overrides_by_model={"ddpm": ["model.init=previous"]}, arms={
        "a": ["regime=replace"], "b": {"overrides": ["model.init=scratch"], "by_model": {"gmm": ["regime=fresh"]}}})
    check_study(study)
    assert {a.name: a.overrides for a in arms_of(study, "ddpm")} == {
        "a": ["model.init=previous", "regime=replace"], "b": ["model.init=previous", "model.init=scratch"]}
    assert {a.name: a.overrides for a in arms_of(study, "gmm")} == {"a": ["regime=replace"], "b": ["regime=fresh"]}
    assert [a.overrides for a in arms_of(study)] == [["regime=replace"], ["model.init=scratch"]]  # model not known
    study.overrides_by_model = {"dppm": ["model.init=previous"]}
    with pytest.raises(ConfigError, match=r"study\.overrides_by_model.*dppm.*model kinds"):
        check_study(study)
    study.overrides_by_model = {"ddpm": "model.init=previous"}
    with pytest.raises(ConfigError, match=r"study\.overrides_by_model\.ddpm.*list of overrides"):
        check_study(study)


def test_an_arm_may_have_its_own_horizon_by_model() -> None:
    from imgcollapse.study import StudyConfig, arms_of, check_study

    study = StudyConfig(name="h", generation={"gmm": 3, "vae": 2}, arms={
        "own": ["regime=replace"], "long": {"overrides": ["regime=accumulate"], "generation": {"gmm": 10}}},
        claims={"c": {"statement": "s", "tests": [{"kind": "deceleration", "arm": "long", "metric": "fid"}]}})
    assert {a.name: a.generation for a in arms_of(study, "gmm")} == {"own": 3, "long": 10}
    assert {a.name: a.generation for a in arms_of(study, "vae")} == {"own": 2, "long": 2}  # the study's horizon
    check_study(study)
    study.generation = {"gmm": 3, "vae": 1}  # the deceleration needs two steps at every model's horizon
    with pytest.raises(ConfigError, match=r"generation=1 .*a generation >= 2"):
        check_study(study)
    study.arms["long"]["generation"] = {"gmm": 10, "nope": 4}
    with pytest.raises(ConfigError, match=r"study\.arms\.long\.generation.*model kinds"):
        check_study(study)


def test_the_claims_and_families_studies_plan_their_horizons_and_protocols_for_every_model() -> None:
    """study=claims' long arms and study=families' crossed design, planned for each model: the horizons, the
    protocol (claims fine-tune, families train from scratch), the shared generations 0 (B via A adopts B's own
    loop's model), the population's families and the home-family check."""
    from imgcollapse.config import compose, validate
    from imgcollapse.study import families_in_turn, load_study, plan

    claims, _ = load_study(["study=claims"])
    families, _ = load_study(["study=families"])
    claims.seeds = families.seeds = [3]
    assert set(families.claims) == {"other_family", "other_family_pool"}
    crossed = ("self_scratch", "other_family", "other_self", "other_via_model", "mixed_pool")
    assert set(families.arms) == set(crossed)
    for model, long in (("gmm", 20), ("vae", 10), ("ddpm", 5)):
        by_arm = {c.arm: c for c in plan(claims, [f"model={model}"], threads=1)}
        assert {c.generation for c in by_arm.values()} == {long}
        # the fine-tuning protocol (overrides_by_model) reaches every arm of the claims
        assert all(("model.init=previous" in c.overrides) == (model != "gmm") for c in by_arm.values())
        by_arm = {c.arm: c for c in plan(families, [f"model={model}"], threads=1)}
        assert {by_arm[a].generation for a in crossed} == {2}
        # families that alternate cannot start from each other's weights: every arm from scratch
        assert all("model.init=scratch" in by_arm[a].overrides and "model.init=previous" not in by_arm[a].overrides
                   for a in crossed)
        assert by_arm["other_family"].shares_with == "self_scratch/seed_3"  # A via B: A's generation-0 model
        assert by_arm["other_via_model"].shares_with == "other_self/seed_3"  # B via A: B's
        assert by_arm["self_scratch"].shares_with is by_arm["other_self"].shares_with is None
        pool = validate(compose(*families.overrides, *families.arms["mixed_pool"]["by_model"].get(
            model, families.arms["mixed_pool"]["overrides"]), f"model={model}"))
        assert families_in_turn(pool) == (["population"], [model, "other"])  # the test reads fid_<model>
        other = validate(compose(*families.overrides, *families.arms["other_via_model"]["by_model"].get(
            model, families.arms["other_via_model"]["overrides"]), f"model={model}"))
        assert families_in_turn(other)[0] == ["other", model]


def test_the_plan_refuses_a_comparison_at_a_generation_the_home_family_did_not_train(
        capsys: pytest.CaptureFixture) -> None:
    from imgcollapse.study import StudyConfig, main, plan

    alternating = ["regime=replace", "+model@families.other=gmm", "chain.models=[model,other]"]
    study = StudyConfig(name="h", seeds=1, generation=3, overrides=["model=gmm", "debug=smoke"],
                        arms={"self": ["regime=replace"], "alt": alternating},
                        claims={"c": {"statement": "s", "tests": [{"name": "alt vs own", "arm": "alt", "vs_arm": "self",
                                                                     "metric": "fid", "expect": "worse"}]}})
    with pytest.raises(ConfigError, match=r"tests\[0\]\.generation=3 .*test 'alt vs own' of claim c: arm alt's "
                                          r"generation 3 was trained by other, not by its home family gmm"):
        plan(study, [], threads=1)
    study.claims["c"]["tests"][0]["generation"] = 2
    assert len(plan(study, [], threads=1)) == 2
    assert main(["--plan", *STUDY, "study.dir=/nonexistent/never_written"]) == 0  # plans, writes nothing
    assert "the plan is valid" in capsys.readouterr().out and not Path("/nonexistent/never_written").exists()


def test_the_generation0_signature_ignores_what_generation_0_never_reads() -> None:
    from omegaconf import OmegaConf

    from imgcollapse.config import compose
    from imgcollapse.resume import generation0_signature

    def sig(*overrides: str, pool: int | None = 1397) -> dict:
        return generation0_signature(OmegaConf.to_container(compose(*overrides), resolve=True), pool)

    base = sig("regime=replace")
    assert sig("regime=accumulate", "regime.subsample=1397") == base
    assert sig("regime=augment", "regime.real_fraction=0.1", "generation=7", "model.init=previous") == base
    assert sig("regime=accumulate", "model.budget=epochs", "model.epochs=54.97") == base  # 600 steps either way
    assert sig("regime=accumulate", "model.budget=epochs", "model.epochs=54.97", pool=None) != sig(pool=None)
    assert sig("regime=replace", "regime.curation=reward", "regime.keep_fraction=0.5") != base
    assert sig("regime=fresh", "regime.first_real=700") != base
    assert sig("seed=1") != base


# A real study ----------------------------------------------------------------------------------------------------
def generation_files(run_dir: Path) -> dict[str, bytes]:
    """Every file a chain's generations hold that its numbers live in (metrics without the timings)."""
    out = {}
    for path in sorted(run_dir.glob("gen_*/*")):
        if path.name == "metrics.json":
            row = json.loads(path.read_text())
            out[str(path.relative_to(run_dir))] = json.dumps({k: v for k, v in row.items() if "seconds" not in k},
                                                             sort_keys=True).encode()
        elif path.suffix == ".npz":
            out[str(path.relative_to(run_dir))] = path.read_bytes()
    return out


def test_a_smoke_study_runs_every_chain_and_answers(shared_study: Path) -> None:
    from scipy import stats

    claims = json.loads((shared_study / "claims.json").read_text())
    assert set(claims["claims"]) == {"accumulation_helps", "degrades"}
    assert claims["seeds"] == [0, 1] and not claims["missing"] and claims["preregistered"]
    test = claims["claims"]["accumulation_helps"]["tests"][0]
    assert test["last"]["n"] == 2 and test["generation"] == 1
    # recomputed by hand from study.csv: recall(accumulate) − recall(replace) at generation 1, per seed, and the
    # one-sided bound at the level the claim gives each of its 2 metrics (Bonferroni within the test)
    rows = list(csv.DictReader(io.StringIO((shared_study / "study.csv").read_text())))
    value = {(r["arm"], int(r["seed"]), int(r["generation"])): float(r["recall"]) for r in rows}
    d = np.array([value["accumulate", s, 1] - value["replace", s, 1] for s in (0, 1)])
    assert test["per_seed"] == pytest.approx(list(d))
    assert test["level_supported"] == pytest.approx(0.025 / 2)
    lo = d.mean() - stats.t.ppf(1 - 0.025 / 2, 1) * d.std(ddof=1) / np.sqrt(2)
    assert test["last"]["lo"] == pytest.approx(lo)
    assert test["verdict"] == ("supported" if lo > 0 else "inconclusive" if test["last"]["hi"] >= 0 else
                               "contradicted")
    lines = (shared_study / "study.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 * 2 * 2  # 3 arms × 2 seeds × generations 0 and 1
    html = (shared_study / "study.html").read_text()
    assert "Claim: accumulation_helps" in html and "× 2 seed(s)" in html and "data:image/png;base64" in html
    for seed in (0, 1):  # accumulate adopted replace's generation 0, curated its model: replace trained it
        source = str((shared_study / "replace" / f"seed_{seed}").resolve())
        shared = json.loads((shared_study / "accumulate" / f"seed_{seed}" / "shared_gen0.json").read_text())
        assert shared["source"] == source and shared["shared"] == "files"
        shared = json.loads((shared_study / "curated" / f"seed_{seed}" / "shared_gen0.json").read_text())
        assert shared["source"] == source and shared["shared"] == "model"
        assert "regime.curation" in shared["differing"]  # and the curation's own settings, nothing else
        curation = ("regime.curation", "regime.keep_fraction", "regime.verif")
        assert all(k.startswith(curation) for k in shared["differing"])
        assert not (shared_study / "replace" / f"seed_{seed}" / "shared_gen0.json").exists()


def test_shared_generations_0_are_bit_identical_to_unshared_ones(shared_study: Path, tmp_path: Path) -> None:
    unshared = tmp_path / "unshared"
    result = study(unshared, "study.share_gen0=false", "study.seeds=1")  # seed 0's chains are the shared study's
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(unshared.glob("*/*/shared_gen0.json"))
    assert sorted(p.parent.name for p in unshared.glob("*/seed_0")) == ["accumulate", "curated", "replace"]
    for chain in ("replace/seed_0", "accumulate/seed_0", "curated/seed_0"):
        a, b = generation_files(shared_study / chain), generation_files(unshared / chain)
        assert len(a) >= 6 and a.keys() == b.keys(), chain
        assert [k for k in a if a[k] != b[k]] == [], chain


def test_a_study_killed_midway_resumes_to_the_same_chains(shared_study: Path, tmp_path: Path) -> None:
    root = tmp_path / "killed"
    # SIGKILL the chain process (the basic launcher runs every chain in it) before the second DONE marker (the
    # first chain's generation 1): it has generation 0 only, and no other chain has started
    killed = study(root, "study.seeds=1", env={"IMGCOLLAPSE_FAULT": "before_done:2"})
    assert killed.returncode != 0
    partial = json.loads((root / "claims.json").read_text())
    assert partial["missing"], "the report names the chains that did not finish"
    resumed = study(root, "study.seeds=1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "3 to run" in resumed.stderr
    for chain in ("replace/seed_0", "accumulate/seed_0", "curated/seed_0"):  # what seed 0 made without the kill
        a, b = generation_files(shared_study / chain), generation_files(root / chain)
        assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == [], chain
    assert not json.loads((root / "claims.json").read_text())["missing"]
    again = study(root, "study.seeds=1")  # finished: nothing runs again
    assert again.returncode == 0 and "0 to run" in again.stderr
    runs = json.loads((root / "study.json").read_text())["runs"]
    assert [r["chains_run"] for r in runs] == [3, 3, 0]


@pytest.mark.parametrize(("override", "names"), [
    ("study.seeds=0", "study.seeds"), ("hydra.run.dir=x", "hydra/launcher"), ("seed=3", "study.seeds"),
    ("study=nonesuch", "nonesuch")])
def test_a_bad_study_override_exits_2_naming_it(override: str, names: str, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from imgcollapse.study import main

    # in this process: a bad override is refused before any chain starts
    assert main([*STUDY, f"study.dir={tmp_path / 'bad'}", override]) == 2
    assert names in caplog.text
    assert not (tmp_path / "bad").exists()


def test_the_study_command_exits_2_on_a_bad_override(tmp_path: Path) -> None:
    result = study(tmp_path / "bad", "seed=3")  # as a user runs it: the exit status and the line on stderr
    assert result.returncode == 2 and "study.seeds" in result.stderr and "Traceback" not in result.stderr


def test_point_values_do_not_depend_on_the_bootstrap_count(tmp_path: Path) -> None:
    """A study turns the per-row bootstrap off (metrics.bootstrap=0): every value must be what it is with it."""
    rows = {}
    for b in (0, 10):
        result = run_cli("debug=smoke", "model=gmm", "threads=1", "generation=0", f"metrics.bootstrap={b}",
                         "report.draw=false", f"hydra.run.dir={tmp_path / str(b)}")
        assert result.returncode == 0, result.stderr[-2000:]
        rows[b] = json.loads((tmp_path / str(b) / "gen_000" / "metrics.json").read_text())
    values = {k: v for k, v in rows[10].items() if not k.endswith(("_lo", "_hi")) and "seconds" not in k}
    assert any(k.startswith("recall_class_") for k in values)
    differ = [k for k, v in values.items() if not (rows[0].get(k) == v or (isinstance(v, float) and np.isnan(v)
                                                                             and np.isnan(rows[0].get(k))))]
    assert differ == []


def test_the_report_command_rebuilds_a_study_from_disk(shared_study: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    import shutil

    from imgcollapse.report.__main__ import main as report_main

    copy = tmp_path / "copy"
    shutil.copytree(shared_study, copy)
    expected = json.loads((copy / "claims.json").read_text())["claims"]
    for name in ("claims.json", "study.html", "study.csv"):
        (copy / name).unlink()
    assert report_main([str(copy), "--markdown"]) == 0
    assert json.loads((copy / "claims.json").read_text())["claims"] == expected
    table = capsys.readouterr().out.splitlines()  # the claims as Markdown, one line per test, on stdout alone
    assert table[0].startswith("| claim | verdict (level) |") and len(table) == 2 + 2 + 2  # a why line per claim
    assert "Accumulating keeps recall higher than replacing" in table[2] and table[2].endswith("| 2 |")
    assert "why:" in table[3] and "(blind)" not in "".join(table)
    assert (copy / "study.html").exists() and len((copy / "study.csv").read_text().splitlines()) == 13


def test_a_study_leaves_tidy_tables_a_latex_table_and_vector_figures(shared_study: Path) -> None:
    from scipy import stats

    from imgcollapse import load_study
    from imgcollapse.errors import UserError

    wide = list(csv.DictReader(io.StringIO((shared_study / "study.csv").read_text())))
    long = list(csv.DictReader(io.StringIO((shared_study / "study_long.csv").read_text())))
    assert list(long[0]) == ["arm", "seed", "generation", "metric", "value"]
    recall = {(r["arm"], r["seed"], r["generation"]): float(r["value"]) for r in long if r["metric"] == "recall"}
    assert recall == {(r["arm"], r["seed"], r["generation"]): float(r["recall"]) for r in wide}
    summary = list(csv.DictReader(io.StringIO((shared_study / "study_summary.csv").read_text())))
    row = next(r for r in summary if (r["arm"], r["generation"], r["metric"]) == ("replace", "1", "recall"))
    values = np.array([recall["replace", s, "1"] for s in ("0", "1")])
    half = stats.t.ppf(0.975, 1) * values.std(ddof=1) / np.sqrt(2)  # the textbook 95% t-interval, n = 2
    assert int(row["n"]) == 2 and float(row["mean"]) == pytest.approx(values.mean())
    assert (float(row["lo"]), float(row["hi"])) == pytest.approx((values.mean() - half, values.mean() + half))

    frame = load_study(shared_study)  # the long form, as seaborn takes it
    assert list(frame.columns) == ["arm", "seed", "generation", "metric", "value"] and len(frame) == len(long)
    assert len(load_study(shared_study, form="wide")) == len(wide)
    with pytest.raises(UserError, match="form='tidy' is not allowed: one of long, wide, summary"):
        load_study(shared_study, form="tidy")

    tex = (shared_study / "claims.tex").read_text()
    assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == 1
    assert tex.count(r" \\") == 1 + 2  # the header and one row per claim
    for name in ("study", "claim_degrades"):
        for suffix, points in (("", 7 * 72), ("_1col", 3.5 * 72)):  # two columns and one, in PDF points
            pdf = (shared_study / f"{name}{suffix}.pdf").read_bytes()
            assert pdf.startswith(b"%PDF") and f"/MediaBox [ 0 0 {points:g} ".encode() in pdf
            assert (shared_study / f"{name}{suffix}.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize(("text", "escaped"), [
    ("50% of a_b & c", r"50\% of a\_b \& c"), ("d −0.06 [−0.08, −0.04]", "d $-$0.06 [$-$0.08, $-$0.04]"),
    ("verify ≫ reward, n ≥ 3", r"verify $\gg$ reward, n $\geq$ 3"), ("lo > 0, hi < 0", "lo $>$ 0, hi $<$ 0"),
    ("{x}^~#$", r"\{x\}\textasciicircum{}\textasciitilde{}\#\$"),
])
def test_latex_cells_are_escaped(text: str, escaped: str) -> None:
    from imgcollapse.report.study import latex_escape

    assert latex_escape(text) == escaped


def test_each_seed_is_a_thin_line_behind_its_band(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from imgcollapse.report.plots import save_paper_figures, sweep_figure
    from imgcollapse.report.study import arm_bands

    rows = [{"arm": arm, "seed": s, "generation": g, "recall": 1 - 0.1 * g - 0.01 * s}
            for arm in ("a", "b") for s in (0, 1, 2) for g in (0, 1, 2)]
    bands = {"recall": arm_bands(rows, ["a", "b"], "recall")}
    assert list(bands["recall"]["a"][4]) == [0, 1, 2]
    assert list(bands["recall"]["a"][4][2][1]) == pytest.approx([0.98, 0.88, 0.78])
    ax = sweep_figure(bands).axes[0]
    thin = [line for line in ax.lines if line.get_linewidth() < 1]
    assert len(thin) == 2 * 3 and len(ax.lines) == 2 * (3 + 1)
    assert all(line.get_zorder() < 3 for line in thin)  # behind the mean
    with caplog.at_level("INFO"):
        written = save_paper_figures(lambda width: sweep_figure(bands, width=width), tmp_path / "fig")
    assert sorted(p.name for p in written) == ["fig.pdf", "fig.svg", "fig_1col.pdf", "fig_1col.svg"]
    assert not [r for r in caplog.records if r.name.startswith("fontTools")]  # no line per subset glyph
