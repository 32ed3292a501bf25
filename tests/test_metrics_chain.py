"""Metrics inside the chain: missing Inception weights, unlabelled data, and config checks on metric keys."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
from conftest import compose_config, run_chain

from imgcollapse.config import ConfigError, validate
from imgcollapse.data import ImageSet, Splits
from imgcollapse.data.digits import load_digits
from imgcollapse.metrics import CLASS_COLUMNS, SPACE_COLUMNS
from imgcollapse.metrics.features import NVLABS_FILE

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

SMOKE = ("debug=smoke", "generation=1", "report.draw=false")  # figures: test_report.py


def offline_inception(tmp_path) -> tuple[str, ...]:
    """Overrides that ask for Inception from NVlabs' file, which is not there and may not be downloaded."""
    weights = tmp_path / "weights" / NVLABS_FILE
    return ("metrics.inception_source=nvlabs", f"metrics.inception_weights={weights}",
            "metrics.inception_download=false")


def unlabelled_digits(config) -> Splits:
    """The digits with their labels dropped: a dataset no classifier can be trained on (a `_target_`)."""
    splits = load_digits(config)
    return Splits(ImageSet(splits.train.images), ImageSet(splits.heldout.images))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_missing_inception_weights_warn_once_leave_columns_empty_and_the_chain_completes(tmp_path, caplog):
    overrides = (*SMOKE, "metrics.extractors=[classifier,inception]", *offline_inception(tmp_path))
    with caplog.at_level(logging.WARNING):
        rows = run_chain(tmp_path / "run", *overrides)
    assert [r["generation"] for r in rows] == [0, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert NVLABS_FILE in warnings[0] and str(tmp_path / "weights" / NVLABS_FILE) in warnings[0]
    for row in rows:
        assert all(row[c + "_inception"] is None for c in SPACE_COLUMNS)
        assert np.isfinite(row["fid"]) and np.isfinite(row["recall"])  # the classifier's metrics carry on
    table = read_csv(tmp_path / "run" / "metrics.csv")
    assert table[1]["fid_inception"] == "" and float(table[1]["fid"]) > 0
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert NVLABS_FILE in meta["metrics"]["unavailable"]["inception"]
    assert meta["metrics"]["extractors"] == ["classifier"] and meta["classifier_accuracy"] > 0.1
    assert not (tmp_path / "weights" / NVLABS_FILE).exists()


def test_unlabelled_dataset_runs_without_a_classifier(tmp_path, caplog):
    overrides = (*SMOKE, f"dataset._target_={__name__}.unlabelled_digits", "metrics.extractors=auto",
                 *offline_inception(tmp_path))  # auto falls back to Inception, whose weights are missing here
    with caplog.at_level(logging.WARNING):
        rows = run_chain(tmp_path / "run", *overrides)
    assert [r["generation"] for r in rows] == [0, 1]
    for row in rows:
        for column in SPACE_COLUMNS + CLASS_COLUMNS:
            assert row[column] is None, column
        assert all(row[c + "_inception"] is None for c in SPACE_COLUMNS)
        assert row["train_loss"] > 0
    assert ImageSet.load(tmp_path / "run" / "gen_001" / "samples.npz").labels is None  # nothing to predict them
    text = caplog.text
    assert "no labels" in text and NVLABS_FILE in text and "no feature extractor is available" in text
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(meta["metrics"]["unavailable"]) == {"classifier", "inception"}
    assert "no labels" in meta["metrics"]["unavailable"]["classifier"]
    assert meta["classifier_accuracy"] is None and meta["metrics"]["extractors"] == []


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("metrics.extractors=[classifier,clip]", "metrics.extractors"),
        ("metrics.extractors=everything", "metrics.extractors"),
        ("metrics.extractors=[]", "metrics.extractors"),
        ("metrics.nearest_k=0", "metrics.nearest_k"),
        ("metrics.num_samples=100000", "metrics.num_samples"),
        ("metrics.num_samples=3", "metrics.num_samples"),
        ("metrics.kid_subset_size=1", "metrics.kid_subset_size"),
        ("metrics.near_copy_ratio=2", "metrics.near_copy_ratio"),
        ("metrics.tail_fraction=0", "metrics.tail_fraction"),
        ("metrics.lost_threshold=1.5", "metrics.lost_threshold"),
        ("metrics.inception_source=web", "metrics.inception_source"),
        ("metrics.inception_batch_size=0", "metrics.inception_batch_size"),
    ],
)
def test_bad_metric_settings_fail_before_anything_runs(override, key):
    with pytest.raises(ConfigError) as e:
        validate(compose_config(override))
    assert e.value.key == key and key in str(e.value)


def test_default_metric_settings_validate():
    config = validate(compose_config())
    assert config.metrics.extractors == "auto" and config.metrics.nearest_k == 5
