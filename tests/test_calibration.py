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
    OPPOSITE,
    SEES,
    apply_change,
    calibration_key,
    load_or_calibrate,
    verdict,
)

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
    assert verdict([1, 2, 3, 4, 5, 6], noise_sd=0.5, worse=1) == SEES
    assert verdict([6, 5, 4, 3, 2, 1], noise_sd=0.5, worse=-1) == SEES  # smaller is worse (recall)
    assert verdict([1, 2, 3, 4, 5, 6], noise_sd=0.5, worse=-1) == OPPOSITE
    assert verdict([1, 1.1, 1.2, 1.3, 1.4, 1.5], noise_sd=0.5, worse=1) == BLIND  # monotone, but within the noise
    assert verdict([1, 3, 1, 3, 1, 3], noise_sd=0.1, worse=1) == BLIND  # beyond the noise, but not monotone
    assert verdict([1, 2, float("nan"), 4, 5, 6], noise_sd=0.1, worse=1) == BLIND


def test_calibration_on_the_digits_sees_what_each_metric_is_for(calibrated):
    _, _, result = calibrated
    sees = result["sees"]
    assert "blur" in sees["fid"] and "noise" in sees["fid"]  # FID sees distortion
    assert "drop_classes" in sees["coverage"] and "drop_classes" in sees["lost_classes"]  # lost modes
    assert "skew" in sees["class_js"] and "skew" in sees["tail_ratio"]  # tails
    assert "duplicate" in sees["near_copy_share"] and "duplicate" in sees["near_copy_share_pixel"]  # copying
    assert "duplicate" not in sees["fid"]  # copies of real images are real images: FID is blind to copying
    assert not set(sees["near_copy_share_pixel"]) - {"duplicate"}  # ... and the copy detector to everything else
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
