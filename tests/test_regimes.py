"""Regimes build exact training sets; curation keeps the highest-scoring candidates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import compose_config, conf

from imgcollapse.config import build, validate, validate_data
from imgcollapse.data import ImageSet
from imgcollapse.regimes import Regime, spearman, verifier_scores

REAL, SYN = 300, 40  # real pool size, images per generation


def tagged(source: int, n: int) -> ImageSet:
    """Images that say where they came from: pixel (0,0) = source (0 real, g+1 generation g), (0,1),(1,0) = index."""
    images = torch.zeros((n, 1, 2, 2), dtype=torch.uint8)
    images[:, 0, 0, 0] = source
    images[:, 0, 0, 1] = torch.arange(n) // 256
    images[:, 0, 1, 0] = torch.arange(n) % 256
    labels = (torch.arange(n) * 7 + source) % 10  # a label that depends on the image, to follow it
    return ImageSet(images, labels, [str(i) for i in range(10)])


def sources(data: ImageSet) -> np.ndarray:
    return data.images[:, 0, 0, 0].numpy()


def ids(data: ImageSet) -> np.ndarray:
    """(source, index) of every image as one integer."""
    return (data.images[:, 0, 0, 0].long() * 65536 + data.images[:, 0, 0, 1].long() * 256
            + data.images[:, 0, 1, 0].long()).numpy()


def make_regime(kind: str, **values) -> Regime:
    """The regime conf/regime/KIND.yaml builds, with `values` replaced."""
    return build(conf("regime", kind, **values))


def chain_sets(regime: Regime, generations: int, seed: int = 0) -> list[tuple[ImageSet, dict]]:
    """Training sets of generations 1..`generations` with tagged synthetic sets standing in for samples."""
    real = tagged(0, REAL)
    synthetic = [tagged(g + 1, SYN) for g in range(generations)]
    return [regime.training_set(real, synthetic[:g], g, seed) for g in range(1, generations + 1)]


def assert_labels_follow_images(data: ImageSet) -> None:
    index = data.images[:, 0, 0, 1].long() * 256 + data.images[:, 0, 1, 0].long()
    assert torch.equal(data.labels, (index * 7 + data.images[:, 0, 0, 0].long()) % 10)


def test_replace_is_the_last_samples_only():
    for g, (data, composition) in enumerate(chain_sets(make_regime("replace"), 3), start=1):
        assert (sources(data) == g).all() and len(data) == SYN
        assert composition == {"num_real": 0, "num_synthetic": SYN}  # all synthetic data is the last generation's
        assert_labels_follow_images(data)


def test_accumulate_keeps_everything_and_grows():
    for g, (data, composition) in enumerate(chain_sets(make_regime("accumulate"), 4), start=1):
        total = REAL + g * SYN
        assert len(data) == total
        assert np.bincount(sources(data), minlength=g + 1).tolist() == [REAL] + [SYN] * g
        assert len(set(ids(data))) == total  # no image twice
        assert composition["num_real"] == REAL and composition["num_synthetic"] == g * SYN
        for k in range(g):
            assert composition[f"share_gen_{k:03d}"] == pytest.approx(SYN / total)
        assert_labels_follow_images(data)


def test_accumulate_subsample_holds_its_size():
    size = 200
    sets = chain_sets(make_regime("accumulate", subsample=size), 4)
    for g, (data, composition) in enumerate(sets, start=1):
        counts = np.bincount(sources(data), minlength=g + 1)
        assert len(data) == size and len(set(ids(data))) == size
        assert composition["num_real"] == counts[0] and composition["num_synthetic"] == size - counts[0]
        for k in range(g):
            assert composition.get(f"share_gen_{k:03d}", 0.0) == pytest.approx(counts[k + 1] / size)
        assert_labels_follow_images(data)
    # by generation 4 the pool is 300 real + 160 synthetic: a uniform draw takes about 35% synthetic
    assert 0.2 < sets[-1][1]["num_synthetic"] / size < 0.5
    assert not np.array_equal(ids(sets[2][0]), ids(sets[3][0]))  # a new draw each generation
    again = chain_sets(make_regime("accumulate", subsample=size), 4)
    assert all(np.array_equal(ids(a), ids(b)) for (a, _), (b, _) in zip(sets, again, strict=True))


@pytest.mark.parametrize("kind", ["fresh", "augment"])
def test_fresh_and_augment_mix_at_the_real_fraction(kind):
    sets = chain_sets(make_regime(kind, real_fraction=0.25), 3)
    for g, (data, composition) in enumerate(sets, start=1):
        counts = np.bincount(sources(data), minlength=g + 1)
        assert len(data) == SYN  # the training set has the last generation's size
        assert counts[0] == 10 and counts[g] == 30 and counts.sum() == SYN  # round(0.25 * 40) real
        # generation 0 trained on the whole pool (first_real null): every real image after it is a reused one
        reuse = {"num_real_reused": 10} if kind == "fresh" else {}
        assert composition == {"num_real": 10, "num_synthetic": 30} | reuse
        assert_labels_follow_images(data)
    real_parts = [set(ids(d)[sources(d) == 0]) for d, _ in sets]
    if kind == "augment":  # drawn once: the same real images every generation
        assert real_parts[0] == real_parts[1] == real_parts[2]
    else:  # drawn anew every generation
        assert real_parts[0] != real_parts[1] and real_parts[1] != real_parts[2]


def test_augment_subset_does_not_depend_on_resuming():
    """Built from (seed, generation) only: generation 3 alone gives the same set as in a full chain."""
    regime = make_regime("augment", real_fraction=0.5)
    full = chain_sets(regime, 3, seed=7)[-1][0]
    real, synthetic = tagged(0, REAL), [tagged(g + 1, SYN) for g in range(3)]
    assert np.array_equal(ids(regime.training_set(real, synthetic, 3, 7)[0]), ids(full))
    assert not np.array_equal(ids(regime.training_set(real, synthetic, 3, 8)[0]), ids(full))


def test_regime_needs_every_earlier_set():
    with pytest.raises(ValueError, match="generation 2"):
        make_regime("replace").training_set(tagged(0, REAL), [tagged(1, SYN)], 2, 0)


# Curation -----------------------------------------------------------------------------------------
def probs_with_confidence(top: np.ndarray, predicted: np.ndarray, classes: int = 10) -> np.ndarray:
    """Class probabilities whose largest entry is `top` at class `predicted`, the rest spread evenly."""
    p = np.tile(((1 - top) / (classes - 1))[:, None], (1, classes))
    p[np.arange(len(top)), predicted] = top
    return p


def test_curation_keeps_the_most_confident():
    regime = make_regime("replace", curation="confidence", keep_fraction=0.4)
    n = 20
    assert regime.num_candidates(n) == 50 == math.ceil(n / 0.4)
    candidates = tagged(1, 50)
    top = np.random.default_rng(0).uniform(0.2, 1.0, 50)
    kept, stats = regime.curate(candidates, probs_with_confidence(top, np.zeros(50, int)), n)
    expected = np.sort(np.argsort(-top)[:n])
    assert len(kept) == n
    assert np.array_equal(ids(kept), ids(candidates)[expected])  # the top 20, in their original order
    assert stats["num_candidates"] == 50
    assert stats["curation_threshold"] == pytest.approx(np.sort(top)[-n])
    assert stats["curated_score"] > stats["candidate_score"]
    assert_labels_follow_images(kept)


def test_condition_curation_scores_the_asked_for_class():
    """A confident sample of the wrong class loses to a less confident one of the class it was made for."""
    candidates = tagged(1, 4)  # labels 1, 8, 5, 2
    predicted = candidates.labels.numpy().copy()
    predicted[0] = (predicted[0] + 1) % 10  # sample 0 shows another class than asked for, confidently
    probs = probs_with_confidence(np.array([0.99, 0.6, 0.7, 0.5]), predicted)
    np.testing.assert_allclose(verifier_scores("condition", probs, candidates.labels),
                               [0.01 / 9, 0.6, 0.7, 0.5])
    kept, _ = make_regime("replace", curation="condition", keep_fraction=0.5).curate(candidates, probs, 2)
    assert ids(kept).tolist() == ids(candidates)[[1, 2]].tolist()
    kept, _ = make_regime("replace", curation="confidence", keep_fraction=0.5).curate(candidates, probs, 2)
    assert ids(kept).tolist() == ids(candidates)[[0, 2]].tolist()


class Judge:
    """A stand-in verifier answering with given class probabilities (curation's rule is under test, not its net)."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.probs[: len(images)]


def verify_regime(probs: np.ndarray, conditional: bool, **values) -> Regime:
    regime = make_regime("replace", curation="verify", **values)
    regime.verifier, regime.conditional = Judge(probs), conditional
    return regime


def test_verify_with_the_rulers_judgement_keeps_what_reward_keeps():
    """One selection rule: a verifier that scores as the ruler does selects exactly what reward curation selects, so
    verify vs reward at the same keep_fraction differs only in who judges."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10) * 0.3, size=50)
    probs[[3, 7]] = probs[[5, 5]]  # ties: the earlier candidate wins under both
    candidates = tagged(1, 50)
    reward, reward_stats = make_regime("replace", curation="reward", keep_fraction=0.4).curate(candidates, probs, 20)
    verify, verify_stats = verify_regime(probs, False, keep_fraction=0.4).curate(candidates, probs, 20)
    assert np.array_equal(ids(verify), ids(reward))
    for key in ("num_candidates", "curation_threshold", "curated_score", "candidate_score"):
        assert verify_stats[key] == pytest.approx(reward_stats[key])
    assert verify_stats["num_verified"] == 50 and verify_stats["verifier_ruler_spearman"] == pytest.approx(1.0)
    # conditional: where every verifier label is the requested class, verify keeps what `condition` keeps
    requested = ImageSet(candidates.images, torch.from_numpy(probs.argmax(1)))
    condition, _ = make_regime("replace", curation="condition", keep_fraction=0.4).curate(requested, probs, 20)
    verify, _ = verify_regime(probs, True, keep_fraction=0.4).curate(requested, probs, 20)
    assert np.array_equal(ids(verify), ids(condition))


def test_verify_keeps_the_top_scores_it_accepts_not_the_first():
    top = np.array([0.6, 0.95, 0.7, 0.99, 0.8])
    kept, stats = verify_regime(probs_with_confidence(top, np.zeros(5, int)), False, verify_threshold=0.65
                                ).curate(tagged(1, 5), None, 2)
    assert ids(kept).tolist() == ids(tagged(1, 5))[[1, 3]].tolist()  # the first two accepted would be 1 and 2
    assert stats["num_verified"] == 4 and stats["curation_threshold"] == pytest.approx(0.95)
    assert "verifier_ruler_spearman" not in stats  # no ruler probabilities, no agreement to record


def test_the_label_check_rejects_a_sample_the_verifier_reads_as_another_class():
    candidates = tagged(1, 4)  # requested classes 1, 8, 5, 2
    read = candidates.labels.numpy().copy()
    read[0] = (read[0] + 1) % 10  # the verifier is sure sample 0 shows another class than was asked for
    probs = probs_with_confidence(np.array([0.99, 0.6, 0.7, 0.5]), read)
    kept, stats = verify_regime(probs, True, verify_threshold=0.0).curate(candidates, None, 4)
    assert ids(kept).tolist() == ids(candidates)[[1, 2, 3]].tolist()
    assert stats["num_verified"] == 3 and stats["verifier_agreement"] == pytest.approx(0.75)
    # its score is the requested class's probability, which the wrong reading leaves low
    assert stats["candidate_score"] == pytest.approx(np.mean([0.01 / 9, 0.6, 0.7, 0.5]))


def test_spearman_known_answers():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=5000)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, 2 * a**3 + 1) == pytest.approx(1.0)  # ranks only
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert abs(spearman(a, rng.uniform(size=5000))) < 0.05  # independent: ~0 (sd 1/sqrt(4999) = 0.014)
    assert spearman(a, np.ones(5000)) is None and spearman(a[:1], a[:1]) is None  # undefined


def test_an_unconditional_verify_may_rank_without_a_threshold():
    """Threshold 0 for an unconditional model is a pure ranking (reward's rule, another judge) once it keeps fewer
    than all candidates; keeping all at threshold 0 would be no curation, and is refused."""
    config = validate(compose_config("model=gmm", "regime.curation=verify", "regime.keep_fraction=0.5"))
    validate_data(config, 1397, 10)
    top = np.array([0.3, 0.9, 0.5, 0.7])
    kept, _ = verify_regime(probs_with_confidence(top, np.zeros(4, int)), False, keep_fraction=0.5
                            ).curate(tagged(1, 4), None, 2)
    assert ids(kept).tolist() == ids(tagged(1, 4))[[1, 3]].tolist()


def test_no_curation_keeps_every_sample_and_adds_no_columns():
    regime = make_regime("replace", curation="none", keep_fraction=0.5)  # keep_fraction only applies with curation
    assert regime.num_candidates(30) == 30
    candidates = tagged(1, 30)
    kept, stats = regime.curate(candidates, np.full((30, 10), 0.1), 30)
    assert np.array_equal(ids(kept), ids(candidates)) and stats == {}


def test_real_plus_keeps_every_real_image_and_adds_lambda_n_samples():
    """Bertrand et al.'s mix: the whole real pool plus lambda x n of the last samples, none twice."""
    for ratio in (0.0, 0.05, 0.1):
        for g, (data, composition) in enumerate(chain_sets(make_regime("real_plus", synthetic_ratio=ratio), 3), 1):
            wanted = round(ratio * REAL)
            counts = np.bincount(sources(data), minlength=g + 1)
            assert counts[0] == REAL and counts[g] == wanted and counts.sum() == REAL + wanted  # last gen's only
            assert len(set(ids(data))) == len(data)
            assert composition == {"num_real": REAL, "num_synthetic": wanted}
            assert_labels_follow_images(data)
    with pytest.raises(ValueError, match="synthetic_ratio"):  # 0.5 x 300 = 150 > the 40 samples made
        chain_sets(make_regime("real_plus", synthetic_ratio=0.5), 1)


def test_fresh_never_repeats_a_real_image_while_the_pool_lasts():
    """first_real=100 of 300 leaves 200 fresh images: 10 generations of 20 (real_fraction 0.5 of 40), then reuse."""
    regime = make_regime("fresh", real_fraction=0.5, first_real=100)
    real = tagged(0, REAL)
    first, composition = regime.first_set(real, 0)
    assert len(first) == 100 and composition == {"num_real": 100, "num_synthetic": 0, "num_real_reused": 0}
    seen = set(ids(first))
    sets = chain_sets(regime, 12)
    for g, (data, composition) in enumerate(sets, start=1):
        real_ids = set(ids(data)[sources(data) == 0])
        assert len(real_ids) == 20 == composition["num_real"]
        if g <= 10:  # the pool lasts: nothing an earlier generation (0 included) trained on
            assert not real_ids & seen and composition["num_real_reused"] == 0, g
        else:  # spent: every real image is one an earlier generation trained on, and the row says so
            assert real_ids <= seen and composition["num_real_reused"] == 20, g
        seen |= real_ids
    assert len(seen) == REAL
    assert regime.fresh_generations(REAL, SYN) == 10


def test_fresh_with_the_whole_pool_first_is_the_old_draw():
    """first_real null: generation 0 has every image, so each later one redraws as kit 0.2 did, bit for bit."""
    regime = make_regime("fresh", real_fraction=0.5)
    for g, (data, _) in enumerate(chain_sets(regime, 3, seed=4), start=1):
        old = np.random.default_rng(np.random.SeedSequence([4, g, 2])).choice(REAL, 20, replace=False)
        assert sorted(ids(data)[sources(data) == 0]) == sorted(old.tolist())


def test_fresh_says_at_start_how_long_the_pool_lasts(caplog):
    regime = make_regime("fresh", real_fraction=0.5, first_real=100)
    with caplog.at_level("INFO", logger="imgcollapse.regimes"):
        regime.num_synthetic = SYN
        regime.setup(tagged(0, REAL), tagged(0, 10), None, conditional=False, generation=12)
    assert "fresh real images last 10 generations after generation 0, not the 12" in caplog.text
    assert "from generation 11 on" in caplog.text and "num_real_reused" in caplog.text


def test_a_regime_built_without_its_sample_count_says_how_to_build_it():
    regime = make_regime("replace")
    assert regime.num_candidates(30) == 30  # an explicit count needs none
    with pytest.raises(ValueError, match="num_synthetic"):
        regime.num_candidates()
