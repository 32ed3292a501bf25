"""The metrics must be right, not just run: known-answer checks on real digits and synthetic features."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import conf
from conftest import digits as digits_splits

from imgcollapse.data import ImageSet, Splits
from imgcollapse.metrics import (
    CLASS_COLUMNS,
    PIXEL_COLUMNS,
    SET_COLUMNS,
    SPACE_COLUMNS,
    evaluate,
    load_or_build_reference,
    read_reference_meta,
    reference_path,
    scored_index,
    setup_metrics,
    without,
)
from imgcollapse.metrics.features import image_keys, load_or_train_classifier
from imgcollapse.metrics.scores import (
    class_statistics,
    expected_coverage,
    fid,
    frechet_terms,
    kid,
    mean_cov,
    memorization,
    prdc,
    sqrt_psd,
    tail_classes,
    within_class_mean_term,
)

CONFIG = conf("metrics", extractors=["classifier"], classifier_epochs=10, bootstrap=20)  # else as in conf/metrics


@pytest.fixture(scope="module")
def digits() -> Splits:
    return digits_splits()


@pytest.fixture(scope="module")
def classifier(digits, cache_dir):
    # 10 epochs: well above chance (the check is on how features move, not on accuracy), a few seconds
    return load_or_train_classifier(digits.train, digits.heldout, cache_dir, epochs=10)


def noised(images: torch.Tensor, sd: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images.float() + sd * torch.randn(images.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


# FID and KID ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fid_and_kid_separate_real_from_degraded_and_grow_with_noise(digits, classifier):
    order = np.random.default_rng(0).permutation(len(digits.train))
    half_a, half_b = digits.train.images[order[: len(order) // 2]], digits.train.images[order[len(order) // 2 :]]
    ref, _ = classifier(half_a)
    mu, sigma = mean_cov(ref)

    def scores(images):
        features, _ = classifier(images)
        return fid(features, mu, sigma), kid(features, ref, num_subsets=20)  # 20 subsets: enough, 5x faster

    fid_real, kid_real = scores(half_b)
    noise = [scores(noised(half_b, sd)) for sd in (16, 32, 64, 128)]
    blur = [scores(TF.gaussian_blur(half_b, 3, s)) for s in (0.6, 1.0, 2.0)]
    fids, kids = [f for f, _ in noise], [k for _, k in noise]
    assert fids == sorted(fids) and len(set(fids)) == len(fids), fids  # strictly grows with noise strength
    assert kids == sorted(kids) and len(set(kids)) == len(kids), kids
    assert fid_real < fids[0] and kid_real < kids[0]
    assert 2 * fid_real < fids[1] and 10 * fid_real < fids[-1]  # far below: sd 32 already doubles it
    assert abs(kid_real) < kids[1] / 5  # KID is unbiased: near 0 (either sign) for two real halves
    for f, k in blur:
        assert f > 5 * fid_real and k > kids[0]


def test_kid_is_seeded_clamped_and_leaves_global_rng_alone():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((60, 16)), rng.standard_normal((40, 16)) + 0.5
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = kid(a, b, num_subsets=20, seed=7)
    assert kid(a, b, num_subsets=20, seed=7) == first  # a re-run gives the same number
    assert kid(a, b, num_subsets=20, seed=8) != first
    assert np.array_equal(np.random.get_state()[1], before)
    assert np.isfinite(kid(a[:10], b, subset_size=1000, seed=0))  # subset size clamped to the 10 samples
    assert kid(a, b, seed=0) > kid(a, rng.standard_normal((40, 16)), seed=0)


# Precision, recall, density, coverage --------------------------------------------------------------------
def test_prdc_on_gaussians():
    rng = np.random.default_rng(0)
    real, same = rng.standard_normal((1000, 8)), rng.standard_normal((1000, 8))
    ident = prdc(same, real, nearest_k=5)
    # Identical distributions: each real point's 5-NN ball covers most, not all, of the support from 1,000
    # points in 8-d (the tails fall outside), so precision and recall land near 0.93-0.95, not 1: 0.9 is the
    # tolerance; they approach 1 as the sample grows and fall as the dimension rises (0.86 at 16-d).
    assert ident["precision"] > 0.9 and ident["recall"] > 0.9 and ident["coverage"] > 0.9
    assert ident["density"] == pytest.approx(1.0, abs=0.15)
    shifted = prdc(same + 1.0, real, nearest_k=5)  # moved off the real manifold: fidelity falls
    assert shifted["precision"] < ident["precision"] - 0.2 and shifted["density"] < 0.6
    shrunk = prdc(0.5 * same, real, nearest_k=5)  # same mean, half the spread: diversity falls
    assert shrunk["recall"] < ident["recall"] - 0.3 and shrunk["coverage"] < ident["coverage"] - 0.1
    assert shrunk["precision"] > 0.95  # still inside the real support


def test_prdc_with_too_few_points_is_empty_not_an_error():
    rng = np.random.default_rng(0)
    assert all(np.isnan(v) for v in prdc(rng.standard_normal((6, 4)), rng.standard_normal((50, 4)), 5).values())


def test_prdc_read_from_shared_distances_equals_prdcs_own_on_every_draw(monkeypatch: pytest.MonkeyPatch):
    """Known answer: compute_prdc on each draw. Equal-size draws of samples and reference (sets score 1,400 samples
    against 400 held-out, classes 20 of each), the draw-by-draw path beyond SharedDistances.MAX_ENTRIES, too few."""
    from imgcollapse.metrics.resampling import equal_subsets, paired
    from imgcollapse.metrics.scores import SharedDistances, prdc_draws

    rng = np.random.default_rng(0)
    for n_fake, n_real, size, dim in ((1400, 400, 400, 24), (140, 40, 20, 128), (400, 900, 400, 8)):
        fake, real = rng.standard_normal((n_fake, dim)), 1.1 * rng.standard_normal((n_real, dim)) + 0.2
        pairs = paired(equal_subsets(n_fake, size, 6, rng), equal_subsets(n_real, size, 6, rng))
        shared = prdc_draws(fake, real, pairs, 5)
        assert shared == [prdc(fake[i], real[r], 5) for i, r in pairs]  # exactly, not approximately
        assert len({round(d["recall"], 6) for d in shared}) > 1  # the draws differ: each is read from its own rows
    assert not SharedDistances.fits(1800, 400)
    monkeypatch.setattr(SharedDistances, "MAX_ENTRIES", 10)
    assert prdc_draws(fake, real, pairs, 5) == shared  # draw by draw: the same numbers
    few = prdc_draws(fake[:6], real, [(np.arange(6), np.arange(6))], 5)[0]
    assert all(np.isnan(v) for v in few.values())


def test_fast_frechet_terms_add_up_to_clean_fids_fid():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((300, 24)) @ rng.standard_normal((24, 24))
    for n, dim_scale in ((200, 1.0), (40, 1.3)):  # more samples than dimensions, and fewer
        x = dim_scale * rng.standard_normal((n, 24)) @ rng.standard_normal((24, 24)) + 0.3
        mu, sigma = mean_cov(ref)
        mean_term, cov_term = frechet_terms(x, mu, sqrt_psd(sigma), float(np.trace(sigma)))
        assert mean_term + cov_term == pytest.approx(fid(x, mu, sigma), rel=1e-6)
        assert mean_term == pytest.approx(float(np.sum((x.mean(0) - mu) ** 2)))


def test_equal_size_coverage_of_one_distribution_meets_its_expectation():
    # Naeem et al.'s expectation for two samples of one distribution: 0.969 at 400 vs 400, k = 5 (docs/METRICS.md)
    rng = np.random.default_rng(0)
    expected = expected_coverage(400, 400, 5)
    assert expected == pytest.approx(0.969, abs=0.001)
    equal = [prdc(rng.standard_normal((400, 16)), rng.standard_normal((400, 16)), 5)["coverage"] for _ in range(6)]
    assert np.mean(equal) == pytest.approx(expected, abs=0.012)
    # unequal sets are not comparable: 1,400 samples against 400 real images cover more by their number alone
    unequal = [prdc(rng.standard_normal((1400, 16)), rng.standard_normal((400, 16)), 5)["coverage"] for _ in range(3)]
    assert np.mean(unequal) > np.mean(equal) + 0.015
    assert np.mean(unequal) == pytest.approx(expected_coverage(400, 1400, 5), abs=0.012)


# Class statistics ----------------------------------------------------------------------------------------
def test_class_statistics_on_constructed_predictions():
    real = np.array([0.2, 0.2, 0.2, 0.2, 0.1, 0.1])  # classes 4 and 5 are the rarest third
    assert list(tail_classes(real, 0.3)) == [4, 5]
    faithful = np.repeat(np.arange(6), [200, 200, 200, 200, 100, 100])
    base = class_statistics(faithful, real, tail_fraction=0.3)
    assert base["lost_classes"] == 0 and base["tail_ratio"] == pytest.approx(1.0)
    assert base["class_kl"] == pytest.approx(0.0) and base["class_tv"] == pytest.approx(0.0)
    assert base["class_entropy"] == pytest.approx(-(real * np.log(real)).sum())
    dropped = faithful.copy()
    dropped[dropped == 5] = 0  # class 5 vanishes, its share goes to class 0
    stats = class_statistics(dropped, real, tail_fraction=0.3)
    assert stats["lost_classes"] == 1
    assert stats["tail_ratio"] == pytest.approx(0.5)  # only class 4 of the tail is left
    assert stats["class_freq_5"] == 0.0 and stats["class_freq_0"] == pytest.approx(0.3)
    named = class_statistics(dropped, real, class_names=list("abcdef"))
    assert named["class_freq_f"] == 0.0 and "class_freq_5" not in named
    assert stats["class_tv"] == pytest.approx(0.1) and stats["class_kl"] > 0
    assert stats["class_entropy"] < base["class_entropy"]
    assert base["class_js"] == pytest.approx(0.0, abs=1e-12)
    assert stats["class_js"] > 0.03  # a lost class is seen (bits, in [0, 1])
    assert stats["class_kl_real"] > 3 * stats["class_kl"]  # mass-covering KL punishes the lost class hard
    thinned = faithful[~((faithful == 4) & (np.arange(len(faithful)) % 20 != 0))]  # class 4 at 5% of its share
    assert class_statistics(thinned, real)["lost_classes"] == 1  # below 10% counts as lost


def _clusters(rng: np.random.Generator, counts: list[int], means: np.ndarray, spread: float = 1.0
              ) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(counts)), counts)
    return means[labels] + spread * rng.standard_normal((len(labels), means.shape[1])), labels


def _class_row(features: np.ndarray, predicted: np.ndarray, ref: np.ndarray, ref_labels: np.ndarray, seed: int,
               tail: list[int]) -> dict[str, float]:
    from types import SimpleNamespace

    from imgcollapse.metrics.scoring import per_class_scores

    metrics = SimpleNamespace(config=replace(CONFIG, bootstrap=0, subsets=3), heldout_labels=ref_labels, seed=seed)
    space = SimpleNamespace(reference=SimpleNamespace(features=ref))
    names = [str(c) for c in range(int(ref_labels.max()) + 1)]
    return per_class_scores(features, predicted, space, metrics, names, np.array(tail))  # type: ignore[arg-type]


def test_a_class_is_scored_at_one_size_whatever_its_share_of_the_samples():
    """Known answers: a faithful generator whose class shrinks (100 -> 25 samples, still above metrics.class_size)
    scores that class's recall and coverage as before; one that narrows the class is seen (by recall); one that
    drops it marks it absent instead of scoring it at a smaller size."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 6, (4, 16))
    ref, ref_labels = _clusters(rng, [40] * 4, means)
    change = {"recall": [], "coverage": []}
    for seed in range(24):
        faithful, labels = _clusters(rng, [100] * 4, means)
        shrunk, shrunk_labels = _clusters(rng, [100, 100, 100, 25], means)
        a = _class_row(faithful, labels, ref, ref_labels, seed, [3])
        b = _class_row(shrunk, shrunk_labels, ref, ref_labels, seed, [3])
        for score in change:
            change[score].append(b[f"{score}_tail"] - a[f"{score}_tail"])
        assert a["absent_tail"] == b["absent_tail"] == 0.0
    for score, values in change.items():
        assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values)) + 0.01, score
    narrow, narrow_labels = _clusters(rng, [100] * 4, means, spread=0.4)
    narrowed = _class_row(narrow, narrow_labels, ref, ref_labels, 0, [3])
    assert narrowed["recall_tail"] < a["recall_tail"] - 0.3  # (coverage: 20 real balls in 16-d hold the centre)
    dropped, dropped_labels = _clusters(rng, [100, 100, 100, 12], means)  # 12 < class_size: too few to score
    gone = _class_row(dropped, dropped_labels, ref, ref_labels, 0, [3])
    assert gone["absent_tail"] == 1.0 and gone["absent_head"] == 0.0
    assert np.isnan(gone["recall_tail"]) and np.isnan(gone["recall_class_3"])
    assert gone["recall_head"] == pytest.approx(a["recall_head"], abs=0.1)


def test_the_real_datas_density_tails_are_covered_as_theory_says_and_lost_by_a_truncated_generator():
    """Known answers: samples of the real distribution cover the held-out images of its lowest- and highest-density
    deciles alike, at Naeem et al.'s expectation whatever the region; samples that never leave the central half of
    the mass lose the low-density decile and keep the high-density one. (Coverage is blunt: in 4-d a cut at 80% of
    the mass still covers ~90% of the sparse decile, and in 16-d a cut at half of it does too; the calibration
    says what it sees in a run's feature space.)"""
    from imgcollapse.metrics.scores import ball_coverage, density_deciles, heldout_radii

    rng = np.random.default_rng(1)
    pool, heldout = rng.standard_normal((1000, 4)), rng.standard_normal((400, 4))
    low, high = density_deciles(heldout, pool, 5, 0.1)
    assert len(low) == len(high) == 40 and not set(low) & set(high)
    assert np.linalg.norm(heldout[low], axis=1).min() > np.linalg.norm(heldout[high], axis=1).max()  # far is sparse
    radii = heldout_radii(heldout, 5)
    faithful = [[ball_coverage(rng.standard_normal((400, 4)), heldout[idx], radii[idx]) for idx in (low, high)]
                for _ in range(12)]
    expected = expected_coverage(400, 400, 5)
    assert np.mean(faithful, axis=0) == pytest.approx([expected, expected], abs=0.03)
    draws = rng.standard_normal((4000, 4))
    central = draws[np.linalg.norm(draws, axis=1) < np.quantile(np.linalg.norm(draws, axis=1), 0.5)][:400]
    low_cov, high_cov = (ball_coverage(central, heldout[idx], radii[idx]) for idx in (low, high))
    assert low_cov < 0.5 and high_cov > 0.9


# Memorization --------------------------------------------------------------------------------------------
def test_memorization_tells_copies_from_fresh_draws():
    rng = np.random.default_rng(0)
    train, null, fresh = (rng.standard_normal((n, 8)) for n in (500, 200, 300))
    copies = train[rng.choice(500, 300)] + 1e-3 * rng.standard_normal((300, 8))
    novel, _ = memorization(fresh, train, null)
    assert novel["memorization_ratio"] == pytest.approx(1.0, abs=0.2) and novel["near_copy_share"] < 0.05
    assert novel["null_near_copy_share"] < 0.05
    copied, _ = memorization(copies, train, null)
    assert copied["memorization_ratio"] < 0.01 and copied["near_copy_share"] == 1.0
    half, _ = memorization(np.concatenate([copies[:150], fresh[:150]]), train, null)
    assert half["near_copy_share"] == pytest.approx(0.5, abs=0.05)


def test_a_copy_of_a_repeated_training_image_is_still_a_copy():
    # a training set that holds an image twice (the samples of a copying model, trained on): its copies have two
    # nearest images at distance 0; the training set is taken without repeats, so they count as copies
    rng = np.random.default_rng(0)
    train = rng.standard_normal((100, 8))
    repeated = np.concatenate([train, train[:50]])
    row, _ = memorization(train[:50], repeated, None)
    assert row["near_copy_share"] == 1.0 and np.isnan(row["memorization_ratio"])  # no null, no ratio


def test_a_contracting_training_set_is_not_copying():
    # the confound of a held-out-real null: when the samples and their training set both contract, unseen real
    # images sit far from the training set and a real-scaled ratio falls with no copying. With draws from the
    # training set's own distribution as the null, the ratio stays near 1 and nothing counts as a near copy.
    rng = np.random.default_rng(1)
    real = rng.standard_normal((400, 16))
    train, samples, null = (0.3 * rng.standard_normal((n, 16)) for n in (500, 400, 400))
    right, _ = memorization(samples, train, null)
    confounded, _ = memorization(samples, train, real)
    assert right["memorization_ratio"] == pytest.approx(1.0, abs=0.15) and right["near_copy_share"] < 0.05
    assert confounded["memorization_ratio"] < 0.5  # what the 0.2 kit reported: "memorization" from contraction


# Reference cache and feature reuse -----------------------------------------------------------------------
class Counting:
    """An extractor that counts the images it is asked about (to see what the cache spares it)."""

    def __init__(self, extractor):
        self.extractor, self.images = extractor, 0
        self.name, self.fingerprint = extractor.name, extractor.fingerprint

    def __call__(self, images):
        self.images += len(images)
        return self.extractor(images)


def test_reference_is_cached_self_describing_and_keyed_by_the_data(digits, classifier, tmp_path):
    counting = Counting(classifier)
    first = load_or_build_reference(digits.heldout, counting, tmp_path)
    path = reference_path(tmp_path, classifier, digits.heldout, "heldout")
    stamp = path.stat().st_mtime_ns
    again = load_or_build_reference(digits.heldout, counting, tmp_path)
    assert counting.images == len(digits.heldout)  # the second call computed nothing
    assert path.stat().st_mtime_ns == stamp and np.array_equal(first.features, again.features)
    meta = read_reference_meta(path)
    assert meta["extractor"] == "classifier" and meta["split"] == "heldout" and meta["num_images"] == 400
    assert meta["data_fingerprint"] == digits.heldout.fingerprint() and meta["feature_dim"] == 128
    other = digits_splits(split_seed=1)  # a changed dataset config: another held-out split, another file
    load_or_build_reference(other.heldout, counting, tmp_path)
    assert counting.images == 2 * len(digits.heldout)
    assert reference_path(tmp_path, classifier, other.heldout, "heldout") != path
    assert len(list((tmp_path / "reference").glob("*.npz"))) == 2


def fake_generation(real: ImageSet, n: int, seed: int) -> ImageSet:
    """Stand-in samples: noised draws from the real pool (a model is not needed to exercise the metrics)."""
    idx = torch.from_numpy(np.random.default_rng(seed).choice(len(real), n))
    return ImageSet(noised(real.images[idx], 24, seed))


@pytest.fixture(scope="module")
def metrics(digits, classifier, cache_dir):
    return setup_metrics(digits, cache_dir, CONFIG, seed=0)


@pytest.mark.slow
def test_no_feature_is_computed_twice_across_generations(digits, metrics):
    memo = metrics.spaces[0].memo
    start = memo.computed
    gen0 = fake_generation(digits.train, 300, seed=0)
    evaluate(gen0, digits.train, metrics)  # training set = the real pool, cached at setup
    assert memo.computed - start == 300
    gen1 = fake_generation(digits.train, 300, seed=1)
    mixed = ImageSet.concat([digits.train.subset(range(100)), gen0])  # like accumulate: real + earlier samples
    evaluate(gen1, mixed, metrics)
    assert memo.computed - start == 600  # only gen1's images were new


@pytest.mark.slow
def test_evaluate_row_has_every_column(digits, metrics):
    samples = fake_generation(digits.train, 200, seed=2)
    ev = evaluate(samples, digits.train, metrics, null=digits.heldout)
    for column in SPACE_COLUMNS + CLASS_COLUMNS + PIXEL_COLUMNS:
        if column.endswith(("_tail", "_head")) and ev.row["absent" + column[column.rindex("_"):]] == 1:
            continue  # every class of the group has fewer samples than metrics.class_size: none is scored
        assert np.isfinite(ev.row[column]), column
        assert np.isfinite(ev.row[f"{column}_lo"]) and np.isfinite(ev.row[f"{column}_hi"]), column
    # known answer: confidence is a mean of per-sample top probabilities, so its bootstrap interval must be the
    # value ± 1.96 × sd/√n of those probabilities (50 resamples estimate a standard error to ~10%)
    top = ev.probs.max(1)
    expected = top.std(ddof=1) / np.sqrt(len(top))
    half = (ev.row["confidence_hi"] - ev.row["confidence_lo"]) / 2
    assert half / 1.96 == pytest.approx(expected, rel=0.3)
    assert ev.row["confidence"] - ev.row["confidence_lo"] == pytest.approx(half)  # symmetric where not clipped
    for column in SET_COLUMNS:  # 200 samples against 400 held out: the reference is subsampled, 10 times
        # (the density tails are against the whole held-out split: with every sample in each draw, no spread)
        assert ev.row[f"{column}_sd"] > 0 if not column.endswith("_density") else ev.row[f"{column}_sd"] == 0, column
    assert ev.row["fid"] == pytest.approx(ev.row["fid_mean"] + ev.row["fid_cov"])
    counts = np.bincount(ev.probs.argmax(1), minlength=10)
    for c, name in enumerate(metrics.class_names):  # a class with fewer samples than class_size is absent, not 0
        present = counts[c] >= CONFIG.class_size
        assert (0 <= ev.row[f"recall_class_{name}"] <= 1) if present else np.isnan(ev.row[f"recall_class_{name}"])
    freqs = [ev.row[f"class_freq_{k}"] for k in range(10)]
    assert sum(freqs) == pytest.approx(1.0)
    assert ev.probs.shape == (200, 10)
    assert ev.row["confidence"] > 0.5  # lightly noised digits stay recognisable
    assert ev.row["fid"] > metrics.baseline["fid"]
    again = evaluate(samples, digits.train, metrics, null=digits.heldout).row  # seeded: reruns match (NaN: absent)
    assert again.keys() == ev.row.keys()
    assert all(again[k] == v or (np.isnan(again[k]) and np.isnan(v)) for k, v in ev.row.items())


def test_the_within_class_mean_term_ignores_class_mix_and_sees_a_shift():
    """Known answers: a faithful generator with other class shares scores ~0 (bias-corrected, whatever each class's
    size); one whose class means moved scores the weighted squared shift."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 3, (4, 8))
    ref_labels = np.repeat(np.arange(4), 250)
    ref = means[ref_labels] + rng.normal(size=(1000, 8))
    weights = np.full(4, 0.25)
    faithful = []
    for _ in range(20):
        labels = rng.choice(4, 600, p=[0.7, 0.2, 0.07, 0.03])  # a heavy class-mix change, classes of 18 to 420
        faithful.append(within_class_mean_term(means[labels] + rng.normal(size=(600, 8)), labels, ref, ref_labels,
                                               weights))
    assert abs(np.mean(faithful)) < 3 * np.std(faithful) / np.sqrt(20) + 0.01
    labels = np.repeat(np.arange(4), 150)
    shift = np.zeros(8)
    shift[0] = 2.0
    moved = within_class_mean_term(means[labels] + shift + rng.normal(size=(600, 8)), labels, ref, ref_labels,
                                   weights)
    assert moved == pytest.approx(4.0, abs=0.3)  # ‖shift‖² in every class


@pytest.mark.slow
def test_intervals_shrink_as_the_sample_count_grows(digits, metrics):
    samples = fake_generation(digits.train, 400, seed=4)

    def widths(n):
        row = evaluate(samples.subset(range(n)), digits.train, metrics, null=digits.heldout).row
        # (not precision or recall: at 60 against 60 the k-NN balls are wide enough to saturate them at 1)
        return {c: row[f"{c}_hi"] - row[f"{c}_lo"]
                for c in ("fid", "kid", "class_js", "confidence", "memorization_ratio_pixel")}

    few, many = widths(60), widths(400)
    for column in few:
        assert many[column] < few[column], (column, few[column], many[column])


@pytest.mark.slow
def test_the_real_floor_compares_two_unseen_real_sets_at_the_rows_size(digits, metrics):
    assert metrics.size == min(len(digits.heldout), len(digits.floor)) == 400
    assert len(digits.floor) == len(digits.heldout)  # same size, same class make-up as the held-out split
    assert np.abs(np.bincount(digits.floor.labels) - np.bincount(digits.heldout.labels)).max() <= 1
    floor_keys = set(image_keys(digits.floor.images))
    assert floor_keys <= set(image_keys(digits.train.images))  # drawn from the pool the models train on ...
    assert not floor_keys & set(image_keys(without(digits.train, digits.floor).images))  # ... not the classifier
    fake = evaluate(fake_generation(digits.train, 400, seed=5), digits.train, metrics).row
    assert metrics.baseline["fid"] < fake["fid"] and metrics.baseline["coverage"] > 0.9
    assert metrics.baseline["fid_lo"] <= metrics.baseline["fid"] <= metrics.baseline["fid_hi"]


@pytest.mark.slow
def test_num_samples_scores_a_seeded_subset_but_labels_all(digits, metrics):
    samples = fake_generation(digits.train, 200, seed=3)
    ev = evaluate(samples, digits.train, replace(metrics, config=replace(CONFIG, num_samples=50)))
    assert ev.probs.shape == (200, 10)  # every sample still gets its predicted label
    idx = scored_index(200, 50, metrics.seed)
    assert len(idx) == 50 and len(set(idx)) == 50 and np.array_equal(idx, scored_index(200, 50, metrics.seed))
    predicted = ev.probs[idx].argmax(1)
    assert [ev.row[f"class_freq_{k}"] for k in range(10)] == pytest.approx([(predicted == k).mean() for k in range(10)])
    direct = evaluate(ImageSet(samples.images[idx]), digits.train, metrics)
    assert ev.row["fid"] == pytest.approx(direct.row["fid"]) and ev.row["recall"] == direct.row["recall"]
