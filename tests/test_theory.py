"""The Gaussian fit -> sample loop against its closed form: the theory check checks the theory."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from scipy.special import digamma

from imgcollapse.theory import closed_form, interval, kit_chain_variances, main, simulate

N, SEEDS, GENERATIONS = 20, 10_000, 50  # few samples per fit: the drift is large; the run takes about a second
LEVEL = 0.999  # 14 interval checks per estimator: at 95% one would miss about every other run by chance


@pytest.fixture(scope="module")
def chains() -> dict[str, np.ndarray]:
    return {e: simulate(e, N, GENERATIONS, SEEDS, dim=2, seed=1) for e in ("unbiased", "mle")}


@pytest.mark.parametrize("estimator, wrong", [("unbiased", "mle"), ("mle", "unbiased")])
def test_closed_form_inside_the_interval_and_the_other_estimators_outside(chains, estimator, wrong):
    var = chains[estimator]
    measured_var, measured_log = interval(var, LEVEL), interval(np.log(var), LEVEL)
    g = np.arange(GENERATIONS + 1)
    right_var, right_log = closed_form(estimator, N, g)
    wrong_var, wrong_log = closed_form(wrong, N, g)
    for k in (1, 5, 10):  # E[sigma^2]: heavy-tailed later on (its variance grows like ((N+1)/(N-1))^g)
        assert measured_var.low[k] <= right_var[k] <= measured_var.high[k], (k, measured_var.mean[k], right_var[k])
    for k in (5, 10):
        assert not measured_var.low[k] <= wrong_var[k] <= measured_var.high[k], k
    for k in (1, 10, 25, 50):
        assert measured_log.low[k] <= right_log[k] <= measured_log.high[k], (k, measured_log.mean[k], right_log[k])
    for k in (10, 25, 50):
        assert not measured_log.low[k] <= wrong_log[k] <= measured_log.high[k], k


# The kit's own GMM chain against the closed forms ----------------------------------------------------------------
# model=gmm with one component, each estimator, float samples: a diag fit and its sampler treat every coordinate
# apart, so one fit a generation runs all 10,000 chains (about a second); a full fit needs a model per chain (~10 ms a
# fit on 2 cores), so its 1,000 chains an estimator run in the slow tier.
KIT_GENERATIONS = 10


@pytest.fixture(scope="module")
def kit_chains() -> dict[str, np.ndarray]:
    return {e: kit_chain_variances(e, N, KIT_GENERATIONS, 10_000, seed=2, covariance_type="diag")
            for e in ("unbiased", "mle")}


def closed_form_inside_and_the_others_outside(var: np.ndarray, estimator: str, wrong: str, checked: list[int]
                                              ) -> None:
    """E[sigma_g^2] and E[log sigma_g^2] of `estimator` inside the measured LEVEL intervals at every `checked`
    generation, `wrong`'s outside at each of them: the test can tell the two estimators apart."""
    g = np.arange(len(var))
    (right_var, right_log), (other_var, other_log) = closed_form(estimator, N, g), closed_form(wrong, N, g)
    for name, measured, right, other in (("var", interval(var, LEVEL), right_var, other_var),
                                         ("log var", interval(np.log(var), LEVEL), right_log, other_log)):
        for k in checked:
            assert measured.low[k] <= right[k] <= measured.high[k], (name, k, measured.mean[k], right[k])
            assert not measured.low[k] <= other[k] <= measured.high[k], (name, k, measured.mean[k], other[k])


@pytest.mark.parametrize("estimator, wrong", [("unbiased", "mle"), ("mle", "unbiased")])
def test_the_kits_gmm_chain_follows_the_closed_form(kit_chains, estimator, wrong):
    closed_form_inside_and_the_others_outside(kit_chains[estimator], estimator, wrong, [1, 2, 5, KIT_GENERATIONS])


@pytest.mark.slow
def test_the_kits_full_covariance_gmm_chain_follows_the_closed_form():
    # the preset's model: 1,000 chains of 4 coordinates an estimator, generations 0..2 (40 s on the shared 2 cores)
    for estimator, wrong in (("unbiased", "mle"), ("mle", "unbiased")):
        var = kit_chain_variances(estimator, N, 2, 1000, dim=4, seed=3)
        closed_form_inside_and_the_others_outside(var, estimator, wrong, [1, 2])


def test_kit_chains_refuse_what_the_theory_does_not_cover():
    with pytest.raises(ValueError, match="covariance_type"):
        kit_chain_variances("mle", N, 1, 2, covariance_type="spherical")
    with pytest.raises(ValueError, match="num_samples"):
        kit_chain_variances("mle", 1, 1, 2)


def test_closed_forms_by_hand():
    var, log_var = closed_form("unbiased", N, np.array([0, 1, 7]), var0=2.0)
    np.testing.assert_allclose(var, 2.0)  # the unbiased fit keeps the mean variance exactly
    k = (N - 1) / 2
    np.testing.assert_allclose(log_var, np.log(2.0) + np.array([0, 1, 7]) * (digamma(k) - np.log(k)))
    var, log_var = closed_form("mle", N, np.array([3]))
    np.testing.assert_allclose(var, ((N - 1) / N) ** 3)
    np.testing.assert_allclose(log_var, 3 * (digamma(k) + np.log(2 / N)))
    with pytest.raises(ValueError, match="estimator"):
        closed_form("median", N, np.array([1]))


def test_the_command_writes_its_table_and_figure(tmp_path, capsys):
    main(["--seeds", "200", "--generations", "20", "--num-samples", "10", "--out", str(tmp_path)])
    with open(tmp_path / "theory.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 21 and (tmp_path / "theory.png").stat().st_size > 0
    assert "inside the 95% interval" in capsys.readouterr().out
    main(["--kit", "--seeds", "20", "--generations", "2", "--dim", "2", "--out", str(tmp_path / "kit")])
    with open(tmp_path / "kit" / "theory.csv") as f:
        assert [r["generation"] for r in csv.DictReader(f)] == ["0", "1", "2"]


# The Gaussian model of the chain: exact samples and a stated estimator -------------------------------------------
def test_float_samples_are_neither_clipped_nor_rounded_and_feed_the_next_fit(tmp_path):
    from conftest import digits, make_model

    from imgcollapse.data import ImageSet, to_float
    from imgcollapse.models.gmm import FLOOR_MULTIPLE

    data = digits().train
    model = make_model("gmm", n_components=1, max_iter=5, float_samples=True)
    model.fit(data, seed=0)
    out = model.sample(200, seed=1)
    assert out.values is not None and out.values.dtype == torch.float64
    assert (out.values.abs() > 1).any()  # not clipped
    assert not torch.equal(out.values, to_float(out.images).double())  # not rounded
    out.save(tmp_path / "s.npz")
    again = ImageSet.load(tmp_path / "s.npz")
    assert torch.equal(again.values, out.values) and torch.equal(again.subset([3, 1]).values, out.values[[3, 1]])
    exact, rounded = make_model("gmm", n_components=1, max_iter=5), make_model("gmm", n_components=1, max_iter=5)
    a = exact.fit(again, seed=0)["model_variance"]
    b = rounded.fit(ImageSet(again.images), seed=0)["model_variance"]
    fitted = out.values.flatten(1).var(0, unbiased=False).numpy() + 1e-4  # EM's variances of the exact values
    assert a == pytest.approx(fitted[fitted >= FLOOR_MULTIPLE * 1e-4].mean(), rel=1e-6)
    assert b < a  # clipping and rounding lose variance
    default = make_model("gmm", n_components=1, max_iter=5)
    default.fit(data, seed=0)
    assert default.sample(5, seed=1).values is None


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_unbiased_estimator_divides_by_n_minus_one(covariance_type):
    from conftest import digits, make_model

    data = digits().train.subset(range(50))
    x = data.exact().flatten(1).numpy()
    mle = make_model("gmm", n_components=1, covariance_type=covariance_type, estimator="mle")
    unbiased = make_model("gmm", n_components=1, covariance_type=covariance_type, estimator="unbiased")
    mle.fit(data, seed=0)
    unbiased.fit(data, seed=0)
    reg = mle.config.reg_covar
    np.testing.assert_allclose(unbiased.mixture.covariances_ - reg * (np.eye(64) if covariance_type == "full" else 1),
                               (mle.mixture.covariances_ - reg * (np.eye(64) if covariance_type == "full" else 1))
                               * 50 / 49, rtol=1e-9, atol=1e-12)
    if covariance_type == "diag":
        np.testing.assert_allclose(unbiased.mixture.covariances_[0], x.var(0, ddof=1) + reg, rtol=1e-9)
    # the sampler uses the unbiased covariance (its precisions were recomputed too)
    assert np.isfinite(unbiased.mixture.score(x))
    assert unbiased.sample(400, seed=0).images.float().std() > mle.sample(400, seed=0).images.float().std()


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("estimator", ["mle", "unbiased"])
def test_coordinates_at_the_floor_leave_the_theorys_columns(covariance_type, estimator):
    from conftest import make_model

    from imgcollapse.data import ImageSet, to_uint8

    x = torch.from_numpy(np.random.default_rng(0).normal(0, 0.3, (50, 1, 1, 5)))
    blank = torch.cat([x, torch.full((50, 1, 1, 3), -1.0, dtype=torch.float64)], dim=3)  # 3 constant pixels
    stats = []
    for values in (x, blank):
        model = make_model("gmm", values.shape[1:], n_components=1, covariance_type=covariance_type,
                           estimator=estimator, reg_covar=1e-6)
        stats.append(model.fit(ImageSet(to_uint8(values.float().clamp(-1, 1)), values=values), seed=0))
    without, with_blank = stats
    assert without["model_floor_coordinates"] == 0 and with_blank["model_floor_coordinates"] == 3
    for key in ("model_variance", "model_log_variance"):
        assert with_blank[key] == pytest.approx(without[key], rel=1e-12), key
    # the floor's variance is reg_covar: counted, it would pull the mean log variance toward log(1e-6) = -13.8
    assert with_blank["model_log_variance"] > -3


@pytest.mark.slow
def test_gaussian_theory_preset_runs_the_theorys_loop(tmp_path):
    from conftest import run_chain

    from imgcollapse.data import ImageSet

    rows = run_chain(tmp_path, "experiment=gaussian_theory", "debug=smoke", "threads=1", "report.draw=false",
                     "generation=2", "model.n_components=1")  # the preset's one Gaussian (debug=smoke fits 4)
    samples = ImageSet.load(tmp_path / "gen_001" / "samples.npz")
    assert samples.values is not None and samples.values.dtype == torch.float64
    assert all(np.isfinite(r["model_variance"]) and np.isfinite(r["model_log_variance"]) for r in rows)
    assert [r["model_floor_coordinates"] for r in rows] == [4, 4, 4]  # the digits' always-blank pixels, only them
