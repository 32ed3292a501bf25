"""Scores as small pure functions of feature arrays and predictions (the shape of clean-fid's own API).

Fidelity and diversity: FID (with its mean and covariance terms) and KID (clean-fid), precision, recall, density
and coverage (prdc). Tails: class statistics of the samples under the domain classifier. Copying: each sample's
nearest and second-nearest training images (the copy-detection criterion), and its distance to the training set
against a null drawn from the distribution that training set came from.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import joblib
import numpy as np
from cleanfid.fid import frechet_distance, kernel_distance
from prdc import compute_prdc
from prdc.prdc import compute_pairwise_distance, get_kth_value
from scipy.linalg import LinAlgWarning
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy
from sklearn.neighbors import NearestNeighbors

PRDC = ("precision", "recall", "density", "coverage")


def mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of an [N, D] feature array: the Gaussian FID compares."""
    return features.mean(axis=0), np.cov(features, rowvar=False)


def fid(features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray) -> float:
    """Fréchet distance between the features' Gaussian and a reference (clean-fid's frechet_distance)."""
    mu, sigma = mean_cov(features)
    with warnings.catch_warnings():
        # clean-fid already falls back to an eps-regularised sqrtm when the product is singular
        warnings.simplefilter("ignore", LinAlgWarning)
        return float(frechet_distance(mu, sigma, ref_mu, ref_sigma))


def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance matrix (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_terms(features: np.ndarray, ref_mu: np.ndarray, ref_sqrt: np.ndarray,
                  ref_trace: float) -> tuple[float, float]:
    """FID split into its mean term ‖μ − μ_ref‖² (where the samples sit: distortion) and covariance term
    tr Σ + tr Σ_ref − 2 tr √(Σ Σ_ref) (their spread: diversity); the sum is clean-fid's FID.

    Written by hand because FID is computed hundreds of times a generation (equal-size subsets, bootstrap): with
    A = √Σ_ref precomputed, tr √(Σ Σ_ref) = Σ √λ of the n×n matrix (X_c A)(X_c A)ᵀ, which for n samples in 2,048
    Inception dimensions is ~100× cheaper than a 2,048² `sqrtm` (tests/test_metrics.py checks it equals clean-fid's).
    """
    n = len(features)
    mu = features.mean(axis=0)
    centred = (features - mu) / np.sqrt(n - 1)
    m = centred @ ref_sqrt
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None)).sum())
    cov_term = float(np.sum(centred * centred)) + ref_trace - 2 * trace_sqrt
    return float(np.sum((mu - ref_mu) ** 2)), max(cov_term, 0.0)


def kid(features: np.ndarray, ref_features: np.ndarray, *, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> float:
    """Kernel distance (clean-fid's kernel_distance) with its subsets drawn from `seed`: a re-run gives the
    same number. The subset size is clamped to the smaller set; the global NumPy RNG is left as it was."""
    size = min(subset_size, len(features), len(ref_features))
    if size < 2:
        return float("nan")
    state = np.random.get_state()  # kernel_distance draws from the global RNG: seed it, then put it back
    np.random.seed(seed)
    try:
        return float(kernel_distance(features, ref_features, num_subsets=num_subsets, max_subset_size=size))
    finally:
        np.random.set_state(state)


def prdc(features: np.ndarray, ref_features: np.ndarray, nearest_k: int = 5) -> dict[str, float]:
    """Precision, recall, density, coverage of `features` against real `ref_features` (prdc.compute_prdc)."""
    if min(len(features), len(ref_features)) <= nearest_k + 1:  # prdc needs k neighbours besides each point
        return dict.fromkeys(PRDC, float("nan"))
    # prdc asks sklearn for its distances with n_jobs=8: a pool of workers per call, 4x (400 images) to 40x (40)
    # slower than computing them in place, and equal-size subsets and the bootstrap call it hundreds of times
    with contextlib.redirect_stdout(io.StringIO()), joblib.parallel_config(backend="sequential"):  # prdc prints sizes
        scores = compute_prdc(real_features=ref_features, fake_features=features, nearest_k=nearest_k)
    return {name: float(value) for name, value in scores.items()}


def prdc_from(real_radii: np.ndarray, fake_radii: np.ndarray, cross: np.ndarray, nearest_k: int) -> dict[str, float]:
    """compute_prdc's four formulas, given its k-NN radii of each set and its real x fake distances."""
    inside = cross < real_radii[:, None]
    return {"precision": float(inside.any(axis=0).mean()),
            "recall": float((cross < fake_radii[None, :]).any(axis=1).mean()),
            "density": float((1.0 / float(nearest_k)) * inside.sum(axis=0).mean()),
            "coverage": float((cross.min(axis=1) < real_radii).mean())}


class SharedDistances:
    """prdc's three distance matrices of two whole sets (real x real, fake x fake, real x fake), computed once by
    prdc's own compute_pairwise_distance; `prdc(i, r)` reads compute_prdc's four numbers for features[i] against
    ref[r] from them. A generation scores 10 equal-size draws of each class: one call per matrix instead of one per
    draw (per-class scores 0.127 -> 0.047 s a digits generation). Draws without repeats only: a bootstrap's
    repeated row would sit off the diagonal at round-off distance instead of exactly 0."""

    MAX_ENTRIES = 4_000_000  # 32 MB of float64: beyond ~2,000 images in the two sets each draw computes its own

    def __init__(self, features: np.ndarray, ref: np.ndarray, nearest_k: int) -> None:
        self.k = nearest_k
        with joblib.parallel_config(backend="sequential"):  # as in `prdc` above
            self.fake = compute_pairwise_distance(features)
            self.real = compute_pairwise_distance(ref)
            self.cross = compute_pairwise_distance(ref, features)

    @classmethod
    def fits(cls, num_features: int, num_ref: int) -> bool:
        """Whether the three matrices of sets this large stay within MAX_ENTRIES."""
        return (num_features + num_ref) ** 2 <= cls.MAX_ENTRIES

    def prdc(self, i: np.ndarray, r: np.ndarray) -> dict[str, float]:
        """compute_prdc(ref[r], features[i]) from the shared matrices (`i`, `r`: index arrays without repeats)."""
        if min(len(i), len(r)) <= self.k + 1:
            return dict.fromkeys(PRDC, float("nan"))
        real_radii = get_kth_value(self.real[np.ix_(r, r)], k=self.k + 1, axis=-1)
        fake_radii = get_kth_value(self.fake[np.ix_(i, i)], k=self.k + 1, axis=-1)
        return prdc_from(real_radii, fake_radii, self.cross[np.ix_(r, i)], self.k)


def prdc_draws(features: np.ndarray, ref: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]],
               nearest_k: int) -> list[dict[str, float]]:
    """compute_prdc(ref[r], features[i]) for each (i, r) in `pairs` (index arrays without repeats): from shared
    distance matrices where they fit, else draw by draw (the same numbers: tests/test_metrics.py)."""
    if not SharedDistances.fits(len(features), len(ref)):
        return [prdc(features[i], ref[r], nearest_k) for i, r in pairs]
    shared = SharedDistances(features, ref, nearest_k)
    return [shared.prdc(i, r) for i, r in pairs]


def density_deciles(heldout: np.ndarray, pool: np.ndarray, nearest_k: int, fraction: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The held-out images in the lowest- and highest-density `fraction` of the real data: density from the real
    pool alone (the distance to a held-out image's k-th nearest pool image: far is sparse), fixed before any
    generation. Returns their indices (lowest density, highest density); none where the sets are too small."""
    if len(pool) <= nearest_k or len(heldout) <= nearest_k + 1:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    # sklearn's neighbours in chunks: a 10,000 x 60,000 matrix (MNIST) would not fit, and prdc's partition doubles it
    kth = NearestNeighbors(n_neighbors=nearest_k, algorithm="brute").fit(pool).kneighbors(heldout)[0][:, -1]
    count = max(1, int(fraction * len(heldout)))  # floor: two shares of at most half never overlap
    order = np.argsort(kth, kind="stable")
    return np.sort(order[-count:]), np.sort(order[:count])


def heldout_radii(heldout: np.ndarray, nearest_k: int) -> np.ndarray:
    """Each held-out image's k-NN radius among the held-out images (prdc's coverage balls, fixed by real data);
    NaN where the split has too few images."""
    if len(heldout) <= nearest_k + 1:
        return np.full(len(heldout), np.nan)
    # k + 1 neighbours: the first is the image itself, as in prdc's compute_nearest_neighbour_distances
    return NearestNeighbors(n_neighbors=nearest_k + 1, algorithm="brute").fit(heldout).kneighbors(heldout)[0][:, -1]


def ball_coverage(features: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Coverage of chosen real images: the share whose k-NN ball (`radii`) holds at least one of `features`
    (prdc's coverage restricted to `centres`; a faithful generator scores expected_coverage whatever the region)."""
    if not len(centres) or not len(features):
        return float("nan")
    with joblib.parallel_config(backend="sequential"):
        distances = compute_pairwise_distance(centres, features)
    return float((distances.min(axis=1) < radii).mean())


def expected_coverage(n_real: int, n_fake: int, nearest_k: int) -> float:
    """Coverage of two samples of one distribution, in expectation (Naeem et al. 2020, Lemma 2):
    1 − ∏_{i=1..k} (n_real − i) / (n_real + n_fake − i); 0.969 for two sets of 400 at k = 5."""
    i = np.arange(1, nearest_k + 1)
    return float(1 - np.prod((n_real - i) / (n_real + n_fake - i)))


def confidence(probs: np.ndarray, threshold: float = 0.9) -> dict[str, float]:
    """How sure the domain classifier is of the samples: mean top probability, share above `threshold`."""
    top = probs.max(axis=1)
    return {"confidence": float(top.mean()), "confident_share": float((top > threshold).mean())}


def class_frequencies(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of each class among `labels`."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]
    return counts / max(1, len(labels))


def tail_classes(real_freq: np.ndarray, fraction: float) -> np.ndarray:
    """The rarest classes of the real data: the `fraction` of classes with the lowest real frequency (at
    least one; ties broken by class index)."""
    count = max(1, round(fraction * len(real_freq)))
    return np.sort(np.argsort(real_freq, kind="stable")[:count])


def class_divergences(freq: np.ndarray, real_freq: np.ndarray, num_samples: int) -> dict[str, float]:
    """How far the samples' class shares `freq` are from the real ones.

    class_js: Jensen–Shannon divergence in bits, in [0, 1], symmetric, finite, and not blind to a lost class
    (losing one of ten balanced classes costs 0.05 bits; class_kl, mode-seeking, barely sees it).
    class_kl: KL(samples ‖ real) in nats; class_kl_real: KL(real ‖ samples) in nats, mass-covering, with the
    samples' counts smoothed by ½ (Jeffreys) so that a lost class costs a large but finite amount.
    """
    smoothed = (freq * num_samples + 0.5) / (num_samples + 0.5 * len(freq))
    return {"class_js": float(jensenshannon(freq, real_freq, base=2) ** 2),
            "class_kl": float(entropy(freq, real_freq)),
            "class_kl_real": float(entropy(real_freq, smoothed))}


def class_statistics(predicted: np.ndarray, real_freq: np.ndarray, *, tail_fraction: float = 0.3,
                     lost_threshold: float = 0.1, class_names: list[str] | None = None) -> dict[str, float]:
    """How the samples' predicted classes compare with the real class frequencies.

    class_js, class_kl, class_kl_real: see `class_divergences`; class_tv: total variation distance;
    class_entropy: entropy of the samples' classes in nats; tail_ratio: share of samples in the rarest real
    classes over their real share (1 = kept, 0 = gone); lost_classes: classes at < `lost_threshold` of their real
    frequency; class_freq_<name>: each class's share (named by `class_names`, else by class index).
    """
    real_freq = np.asarray(real_freq, dtype=np.float64)
    freq = class_frequencies(predicted, len(real_freq))
    tail = tail_classes(real_freq, tail_fraction)
    row = {
        **class_divergences(freq, real_freq, len(predicted)),
        "class_tv": float(0.5 * np.abs(freq - real_freq).sum()),
        "class_entropy": float(entropy(freq)),
        "tail_ratio": float(freq[tail].sum() / real_freq[tail].sum()),
        "lost_classes": int((freq < lost_threshold * real_freq).sum()),
    }
    names = class_names if class_names is not None else [str(k) for k in range(len(freq))]
    row.update({f"class_freq_{name}": float(f) for name, f in zip(names, freq, strict=True)})
    return row


def within_class_mean_term(features: np.ndarray, predicted: np.ndarray, ref: np.ndarray, ref_labels: np.ndarray,
                            weights: np.ndarray) -> float:
    """FID's mean term within classes: Σ_c w_c ‖μ_c − μ_ref,c‖² over the classes both sets hold (at least 2 images
    each; `weights` renormalised over them), each term bias-corrected (− tr Σ_c/n_c − tr Σ_ref,c/n_ref,c) so that a
    faithful generator scores 0 in expectation whatever its class shares. Unbiased, so it can dip below 0."""
    total, mass = 0.0, 0.0
    for c, w in enumerate(np.asarray(weights, dtype=np.float64)):
        mine, real = features[predicted == c], ref[ref_labels == c]
        if len(mine) < 2 or len(real) < 2 or w <= 0:
            continue
        gap = float(np.sum((mine.mean(0) - real.mean(0)) ** 2))
        gap -= float(mine.var(0, ddof=1).sum()) / len(mine) + float(real.var(0, ddof=1).sum()) / len(real)
        total, mass = total + w * gap, mass + w
    return total / mass if mass else float("nan")


def unique_rows(features: np.ndarray) -> np.ndarray:
    """`features` without repeated rows: a training set that holds an image twice has one nearest image, not two."""
    return np.unique(features, axis=0) if len(features) else features


def two_nearest(features: np.ndarray, pool: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances from each row of `features` to its nearest and second-nearest rows of `pool`.

    By hand (one matrix product per chunk, then a partial sort): sklearn's NearestNeighbors took 0.11 s for 400
    against 1,000 rows on 2 cores, 20x this, and memorization runs it for every space and every calibration step."""
    features, pool = np.asarray(features, dtype=np.float64), np.asarray(pool, dtype=np.float64)
    pool_sq = np.einsum("ij,ij->i", pool, pool)
    first, second = [], []
    for start in range(0, len(features), chunk):
        x = features[start : start + chunk]
        x_sq = np.einsum("ij,ij->i", x, x)
        d2 = x_sq[:, None] - 2 * x @ pool.T + pool_sq[None, :]
        # an exact copy is at distance 0, not at the expansion's round-off (which would make 0/0 look like a ratio)
        d2[d2 < 1e-10 * (x_sq[:, None] + pool_sq[None, :])] = 0
        two = np.partition(d2, 1, axis=1)[:, :2]
        first.append(two[:, 0])
        second.append(two[:, 1])
    return np.sqrt(np.concatenate(first)), np.sqrt(np.concatenate(second))


def memorization(features: np.ndarray, train_features: np.ndarray, null_features: np.ndarray | None, *,
                 near_copy_ratio: float = 1 / 3) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Do samples copy their model's training set? Returns the scores and the per-sample arrays behind them.

    near_copy_share: share of samples whose nearest training image is closer than `near_copy_ratio` times the
    second nearest (Yoon et al. 2023; Gu et al. 2023: 1/3), the training set taken without repeats. It needs no
    null: a fresh draw sits about as far from its nearest training image as from the next.
    train_distance: median distance of the samples to their nearest training image; null_distance: the same for
    the null, draws from the distribution the training set came from that the model never saw (generation 0:
    held-out real images; later: extra samples of the model(s) that made the training set);
    memorization_ratio = train_distance / null_distance (about 1: as novel as a fresh draw; 0: copies).
    null_near_copy_share: the copy criterion on the null (what a copy-free draw scores here).
    """
    train = unique_rows(train_features)
    nan = float("nan")
    if len(train) < 2:
        return dict.fromkeys(MEMORIZATION, nan), {}
    d1, d2 = two_nearest(features, train)
    copies = (d1 < near_copy_ratio * d2).astype(np.float64)
    row = {"near_copy_share": float(copies.mean()), "train_distance": float(np.median(d1)),
           "null_distance": nan, "memorization_ratio": nan, "null_near_copy_share": nan}
    arrays = {"copies": copies, "d1": d1}
    if null_features is not None and len(null_features):
        n1, n2 = two_nearest(null_features, train)
        scale = float(np.median(n1))
        row["null_distance"] = scale
        row["null_near_copy_share"] = float((n1 < near_copy_ratio * n2).mean())
        row["memorization_ratio"] = float(np.median(d1) / scale) if scale > 0 else nan
        arrays["null_d1"] = n1
        arrays["null_copies"] = (n1 < near_copy_ratio * n2).astype(np.float64)
    return row, arrays


MEMORIZATION = ("memorization_ratio", "near_copy_share", "train_distance", "null_distance", "null_near_copy_share")
