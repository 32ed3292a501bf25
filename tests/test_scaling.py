"""The scaling study's parts (issue 28): nested pools cut to a size, augment's training-set size, the power-law fit
and the `scaling` test kind, each against a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_config, digits
from test_regimes import REAL, SYN, chain_sets, make_regime, sources

from imgcollapse.config import build, validate, validate_data
from imgcollapse.data.transforms import class_counts, nested_take
from imgcollapse.errors import ConfigError, UserError
from imgcollapse.report.plots import scaling_figure
from imgcollapse.report.study import curve_label, scaling_curves
from imgcollapse.verdicts.judge import judge
from imgcollapse.verdicts.rules import check_claims
from imgcollapse.verdicts.stats import power_law


def test_power_law_recovers_a_known_exponent():
    sizes = np.array([87, 175, 349, 698, 1397])
    assert power_law(sizes, 3.0 * sizes**-0.4)[0] == pytest.approx(0.4, abs=1e-12)
    assert power_law(sizes, 3.0 * sizes**-0.4)[1] == pytest.approx(3.0, rel=1e-9)
    rng = np.random.default_rng(0)
    noisy = 2.0 * sizes**-0.7 * np.exp(0.05 * rng.standard_normal((2000, len(sizes))))
    b, _ = power_law(sizes, noisy)
    assert b.mean() == pytest.approx(0.7, abs=0.005) and 0.02 < b.std() < 0.06  # unbiased, with the spread of noise
    assert np.isnan(power_law(sizes, np.array([1.0, 0.5, -0.1, 0.2, 0.1]))[0])  # no log of an excess <= 0
    with pytest.raises(ValueError, match="2 different sizes"):
        power_law(np.array([10, 10]), np.array([1.0, 2.0]))


def test_a_cut_pool_is_nested_keeps_class_shares_and_follows_its_seed():
    pool = digits().train
    shares = np.array(class_counts(pool)) / len(pool)
    previous: set = set()
    for size in (87, 100, 349, 350, 400, 697, 698, 699, 1000):  # adjacent sizes too: rounding must not un-nest them
        cut = nested_take(pool, size, seed=3)
        images = {bytes(x.numpy()) for x in cut.images}
        assert len(cut) == size and previous <= images
        assert np.abs(np.array(class_counts(cut)) - size * shares).max() < 2
        previous = images
    small = nested_take(pool, 100, seed=3)
    assert not np.array_equal(nested_take(pool, 100, seed=4).images.numpy(), small.images.numpy())
    assert nested_take(pool, len(pool) + 5, seed=3) is pool


def test_dataset_pool_size_cuts_the_pool_and_keeps_the_ruler():
    whole = build(validate(compose_config("model=gmm")).dataset)
    cut = build(validate(compose_config("model=gmm", "dataset.pool_size=150")).dataset)
    assert len(cut.train) == 150 and cut.info["pool_size"] == 150
    assert cut.heldout.fingerprint() == whole.heldout.fingerprint()
    assert cut.floor.fingerprint() == whole.floor.fingerprint()
    assert cut.ruler_pool.fingerprint() == whole.train.fingerprint()  # one metrics classifier for every size
    with pytest.raises(UserError, match="dataset.pool_size=5000"):
        build(validate(compose_config("model=gmm", "dataset.pool_size=5000")).dataset)
    with pytest.raises(ConfigError, match="dataset.pool_size"):
        validate(compose_config("model=gmm", "dataset.pool_size=1"))


def test_augment_train_size_sets_each_training_set_and_its_real_share():
    size = 48  # of a real pool of 300 and 40 samples a generation
    for data, composition in chain_sets(make_regime("augment", real_fraction=0.25, train_size=size), 3):
        assert len(data) == size and composition["num_real"] == 12 and (sources(data) == 0).sum() == 12
    # all real: the real pool itself every generation, as generation 0 trained on it
    for data, _ in chain_sets(make_regime("augment", real_fraction=1.0, train_size=REAL), 2):
        assert len(data) == REAL and (sources(data) == 0).all()
    # null: the last samples' count, as before the key existed
    data, _ = chain_sets(make_regime("augment", real_fraction=0.5), 1)[0]
    assert len(data) == SYN


def test_augment_train_size_is_checked_against_the_pool_and_the_samples():
    def check(*overrides: str) -> None:
        config = validate(compose_config("model=gmm", "regime=augment", "dataset.pool_size=87", *overrides))
        check_data(config, num_train=87)

    check("regime.real_fraction=1.0", "regime.train_size=87")
    with pytest.raises(ConfigError, match=r"regime.train_size=175.*at most 87.*175 real images.*pool holds 87"):
        check("regime.real_fraction=1.0", "regime.train_size=175")  # an 'all real' arm would be half samples
    with pytest.raises(ConfigError, match=r"regime.train_size.*num_synthetic=1400.*takes 1792"):
        check_data(validate(compose_config("model=gmm", "regime=augment", "regime.real_fraction=0.1",
                                           "regime.train_size=1991")), num_train=1397)
    with pytest.raises(ConfigError, match="regime.train_size"):
        validate(compose_config("model=gmm", "regime=augment", "regime.train_size=0"))


def check_data(config, num_train: int) -> None:
    validate_data(config, num_train, 10)


SIZES = [100, 200, 400, 800]


def scaling_rows(exponents: dict[str, float], seeds=(0, 1, 2), noise: float = 0.03, floor: float = 5.0,
                 metric: str = "fid"):
    """Rows of a study whose arm `<share>_<size>` has excess error a·N^-b over `floor` at generation 1, b by share
    (FID above it; recall, where higher is better, below it); a chain's real floor in the floors map, as run.json
    gives it."""
    sign = -1 if metric == "recall" else 1
    scale = 0.5 if metric == "recall" else 40
    rng = np.random.default_rng(1)
    rows, chains, floors = [], [], {}
    for share, b in exponents.items():
        for n in SIZES:
            arm = f"{share}_{n}"
            for seed in seeds:
                run = f"{arm}/seed_{seed}"
                chains.append({"arm": arm, "seed": seed, "run_dir": run, "generation": 1})
                floors[run] = {metric: floor}
                for g in (0, 1):
                    excess = scale * n ** -(b if g else 0.5) * np.exp(noise * rng.standard_normal())
                    rows.append({"arm": arm, "seed": seed, "generation": g, metric: floor + sign * excess,
                                 "num_real": n})
    return rows, chains, floors


def scaling_study(exponents: dict[str, float], **kw) -> dict:
    rows, chains, floors = scaling_rows(exponents, **kw)
    test = {"name": "flatter", "kind": "scaling", "arms": [f"dirty_{n}" for n in SIZES],
            "vs_arms": [f"clean_{n}" for n in SIZES], "metrics": [kw.get("metric", "fid")]}
    study = {"claims": {"flattens": {"statement": "flattens", "tests": [test]}}}
    check_claims(study["claims"], {}, {c["arm"]: 1 for c in chains})
    return judge(rows, {"name": "s", "study": study, "chains": chains}, root=".", floors=floors)


def test_a_scaling_test_finds_a_flatter_curve_and_not_an_equal_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = scaling_study({"clean": 0.5, "dirty": 0.2})["claims"]["flattens"]
    test = found["tests"][0]
    assert found["verdict"] == "supported"
    assert test["last"]["mean"] == pytest.approx(0.3, abs=0.05) and test["last"]["n"] == 3
    assert test["exponents"]["vs_arms"][0] == pytest.approx(0.5, abs=0.05)
    assert test["points"]["dirty_100"]["size"] == {0: 100, 1: 100, 2: 100}
    # A/A: the same exponent for both curves reads inconclusive, not flatter
    assert scaling_study({"clean": 0.4, "dirty": 0.4})["claims"]["flattens"]["verdict"] == "inconclusive"
    # steeper, not flatter: contradicted
    assert scaling_study({"clean": 0.2, "dirty": 0.5})["claims"]["flattens"]["verdict"] == "contradicted"
    # recall, where higher is better: its excess is the floor less the value, and the same exponents come out
    recall = scaling_study({"clean": 0.5, "dirty": 0.2}, metric="recall", floor=0.95)["claims"]["flattens"]
    assert recall["verdict"] == "supported" and recall["tests"][0]["last"]["mean"] == pytest.approx(0.3, abs=0.05)


def test_a_seed_whose_excess_reaches_the_floor_is_named_not_silently_dropped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows, chains, floors = scaling_rows({"clean": 0.5, "dirty": 0.2})
    for row in rows:  # seed 2's largest dirty pool at the floor exactly: no log of its excess
        if row["arm"] == "dirty_800" and row["seed"] == 2 and row["generation"] == 1:
            row["fid"] = 5.0
    test = {"name": "flatter", "kind": "scaling", "arms": [f"dirty_{n}" for n in SIZES],
            "vs_arms": [f"clean_{n}" for n in SIZES], "metrics": ["fid"]}
    study = {"claims": {"flattens": {"statement": "flattens", "tests": [test]}}}
    found = judge(rows, {"name": "s", "study": study, "chains": chains}, root=".", floors=floors)
    t = found["claims"]["flattens"]["tests"][0]
    assert t["dropped_seeds"] == [2] and t["last"]["n"] == 2 and "seed(s) 2 of 3 have no exponent" in t["trust_note"]


def test_a_scaling_test_is_checked_when_the_study_loads():
    arms = {f"{s}_{n}": 1 for s in ("clean", "dirty") for n in SIZES}
    good = {"kind": "scaling", "arms": ["dirty_100", "dirty_200"], "vs_arms": ["clean_100", "clean_200"],
            "metric": "fid"}

    def check(**changes):
        check_claims({"c": {"statement": "s", "tests": [{**good, **changes}]}}, {}, arms)

    check()
    with pytest.raises(ConfigError, match=r"tests\[0\]\.arm.*absent in a test of kind scaling"):
        check(arm="dirty_100")
    with pytest.raises(ConfigError, match=r"tests\[0\]\.arms.*>= 2 different arms"):
        check(arms=["dirty_100"])
    with pytest.raises(ConfigError, match=r"tests\[0\]\.vs_arms.*arms of the study"):
        check(vs_arms=["clean_100", "nowhere"])
    with pytest.raises(ConfigError, match=r"tests\[0\]\.vs_arms.*two different curves"):
        check(vs_arms=["dirty_100", "clean_200"])
    with pytest.raises(ConfigError, match=r"tests\[0\]\.generation.*generation 0 both curves"):
        check(generation=0)
    with pytest.raises(ConfigError, match=r"tests\[0\]\.arms.*absent unless kind: scaling"):
        check_claims({"c": {"statement": "s", "tests": [{"arm": "clean_100", "vs_arm": "dirty_100", "metric": "fid",
                                                         "expect": "worse", "arms": ["clean_100"]}]}}, {}, arms)


def test_the_scaling_figure_draws_each_curve_once_with_its_exponent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    claim = scaling_study({"clean": 0.5, "dirty": 0.2})["claims"]["flattens"]
    curves = scaling_curves(claim)
    assert list(curves) == ["fid"] and list(curves["fid"]) == ["clean", "dirty"]
    clean = curves["fid"]["clean"]
    assert clean["sizes"] == SIZES and np.asarray(clean["excess"]).shape == (3, len(SIZES))
    assert np.mean(clean["exponent"]) == pytest.approx(0.5, abs=0.05)
    fig = scaling_figure(curves, generation=1)
    (ax,) = fig.axes
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert [t.get_text().split(":")[0] for t in ax.get_legend().get_texts()] == ["clean", "dirty"]
    assert curve_label(["n87_p50", "n175_p50"]) == "p50" and curve_label(["a", "b"]) == "a..b"
