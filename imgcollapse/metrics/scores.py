"""Scores as small pure functions of feature arrays (the shape of clean-fid's own API)."""

from __future__ import annotations

import warnings

import numpy as np
from cleanfid.fid import frechet_distance
from scipy.linalg import LinAlgWarning


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


def confidence(probs: np.ndarray, threshold: float = 0.9) -> dict[str, float]:
    """How sure the domain classifier is of the samples: mean top probability, share above `threshold`."""
    top = probs.max(axis=1)
    return {"confidence": float(top.mean()), "confident_share": float((top > threshold).mean())}
