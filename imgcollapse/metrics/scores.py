"""Scores as small pure functions of feature arrays and predictions (the shape of clean-fid's own API).

Fidelity and diversity: FID and KID (clean-fid), precision, recall, density and coverage (prdc).
Tails: class statistics of the samples under the domain classifier. Copying: nearest-neighbour
distances of samples to their model's training set, scaled by the held-out split's distances to it.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from cleanfid.fid import frechet_distance, kernel_distance
from prdc import compute_prdc
from scipy.linalg import LinAlgWarning
from scipy.stats import entropy
from sklearn.metrics import pairwise_distances_argmin_min


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
        return dict.fromkeys(("precision", "recall", "density", "coverage"), float("nan"))
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        scores = compute_prdc(real_features=ref_features, fake_features=features, nearest_k=nearest_k)
    return {name: float(value) for name, value in scores.items()}


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


def class_statistics(predicted: np.ndarray, real_freq: np.ndarray, *, tail_fraction: float = 0.3,
                     lost_threshold: float = 0.1, class_names: list[str] | None = None) -> dict[str, float]:
    """How the samples' predicted classes compare with the real class frequencies.

    class_kl: KL(samples ‖ real) in nats (finite even when a class is lost: `lost_classes` counts those);
    class_tv: total variation distance; class_entropy: entropy of the samples' classes in nats;
    tail_ratio: share of samples in the rarest real classes over their real share (1 = kept, 0 = gone);
    lost_classes: classes at < `lost_threshold` of their real frequency; class_freq_<name>: each class's share
    (named by `class_names`, else by class index).
    """
    real_freq = np.asarray(real_freq, dtype=np.float64)
    freq = class_frequencies(predicted, len(real_freq))
    tail = tail_classes(real_freq, tail_fraction)
    row = {
        "class_kl": float(entropy(freq, real_freq)),
        "class_tv": float(0.5 * np.abs(freq - real_freq).sum()),
        "class_entropy": float(entropy(freq)),
        "tail_ratio": float(freq[tail].sum() / real_freq[tail].sum()),
        "lost_classes": int((freq < lost_threshold * real_freq).sum()),
    }
    names = class_names if class_names is not None else [str(k) for k in range(len(freq))]
    row.update({f"class_freq_{name}": float(f) for name, f in zip(names, freq, strict=True)})
    return row


def nearest_distances(features: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of `features` to its nearest row of `pool` (chunked, low memory)."""
    return pairwise_distances_argmin_min(features, pool, metric="euclidean")[1]


def memorization(features: np.ndarray, train_features: np.ndarray, heldout_features: np.ndarray, *,
                 near_copy_ratio: float = 1 / 3) -> dict[str, float]:
    """Do samples sit closer to their model's training set than fresh real images do?

    memorization_ratio: median nearest-neighbour distance of the samples to the training set over the
    held-out split's median distance to it (about 1: as novel as unseen real images; 0: copies).
    near_copy_share: share of samples closer to a training image than `near_copy_ratio` times that median.
    """
    scale = float(np.median(nearest_distances(heldout_features, train_features)))
    if not scale > 0:
        return {"memorization_ratio": float("nan"), "near_copy_share": float("nan")}
    d = nearest_distances(features, train_features)
    return {"memorization_ratio": float(np.median(d) / scale),
            "near_copy_share": float((d < near_copy_ratio * scale).mean())}
