"""The calibration must tell a metric that sees a change from one that does not, on the embedded digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, conf
from conftest import digits as digits_splits

from imgcollapse.metrics import setup_metrics
from imgcollapse.metrics.calibration import (
    BLIND,
    CHANGES,
    NOT_CHECKED,
    OPPOSITE,
    SEES,
    apply_change,
    calibration_key,
    load_or_calibrate,
    response,
    specific,
    verdict,
)

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

# the settings the command-line test passes as overrides, so both share one cached calibration
METRICS = conf("metrics", extractors=["classifier"], classifier_epochs=10, bootstrap=20)
OVERRIDES = ("metrics.extractors=[classifier]", "metrics.classifier_epochs=10", "metrics.bootstrap=20",
             "num_synthetic=200")


@pytest.fixture(scope="module")
def calibrated(cache_dir):
    splits = digits_splits()
    metrics = setup_metrics(splits, cache_dir, METRICS, seed=0, num_scored=200)
    return splits, metrics, load_or_calibrate(splits, metrics, cache_dir)


def test_the_verdict_rule_on_constructed_curves():
    assert verdict([1, 2, 3, 4, 5, 6], noise_sd=0.5, column="fid") == SEES
    assert verdict([6, 5, 4, 3, 2, 1], noise_sd=0.5, column="recall") == SEES  # smaller is worse (recall)
    assert verdict([1, 2, 3, 4, 5, 6], noise_sd=0.5, column="recall") == OPPOSITE
    assert verdict([1, 1.1, 1.2, 1.3, 1.4, 1.5], noise_sd=0.5, column="fid") == BLIND  # monotone, within the noise
    assert verdict([1, 3, 1, 3, 1, 3], noise_sd=0.1, column="fid") == BLIND  # beyond the noise, but not monotone
    assert verdict([1, 2, float("nan"), 4, 5, 6], noise_sd=0.1, column="fid") == NOT_CHECKED
    # best at 1: density drifting above 1 is worse, as is one falling below it; a falling tail share is worse
    assert verdict([1.0, 1.2, 1.4, 1.6, 1.8, 2.0], noise_sd=0.05, column="density") == SEES
    assert verdict([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], noise_sd=0.05, column="density") == SEES
    assert verdict([0.6, 0.7, 0.8, 0.9, 0.95, 1.0], noise_sd=0.05, column="density") == OPPOSITE
    assert verdict([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], noise_sd=0.05, column="tail_ratio") == SEES
    assert verdict([1.0, 1.1, 1.2, 1.3, 1.4, 1.5], noise_sd=0.05, column="tail_ratio") == OPPOSITE


def test_a_noise_that_could_not_be_measured_is_not_checked_never_zero():
    """Without a noise estimate a pure-noise curve that happens to end above its start must not 'see' anything."""
    assert verdict([1, 2, 3, 4, 5, 6], noise_sd=float("nan"), column="fid") == NOT_CHECKED
    assert verdict([1, 1.001, 1.002, 1.003, 1.004, 1.005], noise_sd=0.0, column="fid") == SEES  # noiseless: exact


def _change(kind, fid, **columns):
    """A calibration entry: the FID curve and each column's, with their verdicts (noise sd 0.1)."""
    metrics = {c: {"values": v, "noise_sd": 0.1, "verdict": verdict(v, 0.1, c)} for c, v in
               {"fid": fid, **columns}.items()}
    return {"kind": kind, "metrics": metrics}


def test_a_metric_speaks_for_a_kind_only_where_it_responds_more_to_it_than_to_anything_else():
    """Matched severity: per unit of the FID change each change causes."""
    fid = [0, 2, 4, 6, 8, 10.0]
    result = {"changes": {
        "blur": _change("distortion", fid, fid_mean=[0, 1, 2, 3, 4, 5.0], recall=[1, .94, .88, .82, .76, .7]),
        "drop_classes": _change("homogeneity", fid, fid_mean=[0, 1.2, 2.4, 3.6, 4.8, 6.0],
                                recall=[1, .9, .8, .7, .6, .5]),
        "duplicate": _change("copying", [0, 0, 0, 0, 0, 0.0], fid_mean=[0] * 6, recall=[1.0] * 6)}}
    ok, why = specific(result, "fid_mean", {"distortion"})
    assert ok is False and "drop_classes" in why  # it moves more with class dropping: not specific to distortion
    assert specific(result, "fid_mean", {"homogeneity"})[0] is True
    ok, why = specific(result, "recall", {"homogeneity"})
    assert ok is True and "blur" in why  # 0.05 per FID unit against blur's 0.03
    assert specific(result, "recall", {"distortion"})[0] is False
    assert specific(result, "fid", {"distortion"})[0] is False  # the ruler itself speaks for nothing in particular
    assert specific(result, "recall", {"copying"})[0] is False  # blind to it
    assert specific(result, "recall", {"tails"})[0] is None  # no such change made: not checked


def test_the_calibration_noise_does_not_depend_on_metrics_bootstrap(calibrated, cache_dir):
    """A study runs with metrics.bootstrap=0: the calibration keeps its noise (its own resamples) and its cache."""
    import dataclasses

    splits, metrics, result = calibrated
    zero = dataclasses.replace(metrics, config=dataclasses.replace(metrics.config, bootstrap=0))
    assert calibration_key(splits, zero) == result["key"]
    noise = {c: m["noise_sd"] for e in result["changes"].values() for c, m in e["metrics"].items()
             if c in ("fid", "recall", "precision", "coverage", "fid_mean_within")}
    assert noise and all(np.isfinite(list(noise.values())))  # measured even though the rows' bootstrap is off
    assert noise["fid"] > 0 and noise["recall"] > 0 and noise["fid_mean_within"] > 0  # (precision can saturate at 1)


def test_calibration_on_the_digits_sees_what_each_metric_is_for(calibrated):
    _, _, result = calibrated
    sees = result["sees"]
    assert "blur" in sees["fid"] and "noise" in sees["fid"]  # FID sees distortion
    assert "drop_classes" in sees["coverage"] and "drop_classes" in sees["lost_classes"]  # lost modes
    assert "skew" in sees["class_js"] and "skew" in sees["tail_ratio"]  # tails
    assert "duplicate" in sees["near_copy_share"] and "duplicate" in sees["near_copy_share_pixel"]  # copying
    assert "duplicate" not in sees["fid"]  # copies of real images are real images: FID is blind to copying
    assert not set(sees["near_copy_share_pixel"]) - {"duplicate"}  # ... and the copy detector to everything else
    # the within-class mean term sees distortion, and a change of class mix far less than FID's mean term does
    # (what it still sees of skew is the redraw's duplicates: a class of a few distinct images)
    assert {"blur", "noise"} & set(sees["fid_mean_within"])

    def ratio(column: str) -> float:
        r = {c: response(result["changes"][c]["metrics"][column], column) for c in ("skew", "blur")}
        return r["skew"] / r["blur"]

    assert ratio("fid_mean_within") < 0.5 * ratio("fid_mean"), (ratio("fid_mean_within"), ratio("fid_mean"))
    assert specific(result, "fid_mean_within", {"distortion"})[0] is True
    assert specific(result, "fid_mean", {"distortion"})[0] is False  # skew moves it more per unit of FID
    assert specific(result, "recall", {"homogeneity", "tails", "contraction"})[0] is True
    for change, entry in result["changes"].items():
        assert entry["strengths"][0] == 0 and len(entry["strengths"]) == len(CHANGES[change][1]) + 1
        for column, curve in entry["metrics"].items():
            assert len(curve["values"]) == len(entry["strengths"]), (change, column)
    assert result["size"] == 200


def test_calibration_is_cached_by_data_and_settings(calibrated, cache_dir):
    splits, metrics, result = calibrated
    path = cache_dir / "calibration" / f"{calibration_key(splits, metrics)}.json"
    stamp = path.stat().st_mtime_ns
    again = load_or_calibrate(splits, metrics, cache_dir)
    assert json.dumps(again) == json.dumps(result) and path.stat().st_mtime_ns == stamp  # (NaN != NaN: as text)
    other = setup_metrics(digits_splits(split_seed=1), cache_dir, METRICS, seed=0, num_scored=200)
    assert calibration_key(digits_splits(split_seed=1), other) != result["key"]  # other data, other calibration


def test_changes_are_seeded_and_zero_strength_changes_nothing(calibrated):
    splits, metrics, _ = calibrated
    base = splits.floor.subset(range(100))
    assert apply_change("blur", 0.0, base, splits.train, metrics.real_freq, 0) is base
    first = apply_change("noise", 8.0, base, splits.train, metrics.real_freq, 0)
    assert np.array_equal(first.images, apply_change("noise", 8.0, base, splits.train, metrics.real_freq, 0).images)
    dropped = apply_change("drop_classes", 0.3, base, splits.train, metrics.real_freq, 0)
    assert len(dropped) == len(base) and len(set(dropped.labels.tolist())) == 7


def test_the_command_writes_json_and_figure_and_names_bad_overrides(calibrated, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "imgcollapse.calibrate", "--out", str(tmp_path), *OVERRIDES],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads((tmp_path / "calibration.json").read_text())
    assert written["key"] == calibrated[2]["key"]  # the same settings read the same cached calibration
    assert (tmp_path / "calibration.png").stat().st_size > 10_000
    assert "fid" in done.stderr and "blur" in done.stderr
    bad = subprocess.run([sys.executable, "-m", "imgcollapse.calibrate", "metrics.nearest_k=0"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "metrics.nearest_k" in bad.stderr


def test_every_calibration_value_and_verdict_is_the_same_without_the_rows_bootstrap(calibrated, monkeypatch):
    """study=claims scores its rows with metrics.bootstrap=0: the calibration it reads must not change with it
    (one change at two strengths, to keep it quick)."""
    import dataclasses

    from imgcollapse.metrics import calibration

    splits, metrics, _ = calibrated
    monkeypatch.setattr(calibration, "CHANGES", {"blur": ("distortion", (0.7, 1.5), "σ")})
    results = []
    for b in (0, 20):
        changed = dataclasses.replace(metrics, config=dataclasses.replace(metrics.config, bootstrap=b))
        result = calibration.calibrate(splits, changed)
        result.pop("seconds")
        results.append(json.dumps(result))
    assert results[0] == results[1]
    assert "NaN" not in results[0].split('"noise_sd"')[1][:20]  # the zero-change noise was measured


def test_refresh_recomputes_a_chains_calibration_from_its_own_overrides(calibrated, tmp_path):
    """After a calibration version change, a finished chain's calibration.json is made again, not the chain."""
    from imgcollapse.calibrate import main
    from imgcollapse.metrics.calibration import CALIBRATION_VERSION

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("\n".join(f"- {o}" for o in (*OVERRIDES, "hydra.run.dir=x")))
    (run / "calibration.json").write_text(json.dumps({"version": 1}))
    assert main(["--refresh", str(run)]) == 0
    written = json.loads((run / "calibration.json").read_text())
    assert written["version"] == CALIBRATION_VERSION and written["key"] == calibrated[2]["key"]
    assert main(["--refresh", str(tmp_path / "nonesuch")]) == 2
