"""scikit-learn's GaussianMixture on flattened pixels, optionally in a PCA subspace: the fast baseline.

Sampling draws component k with probability weight_k and x = mean_k + sqrt(temperature) · L_k ε, where
L_k L_kᵀ is component k's covariance: the temperature scales the covariance (MAD's sampling bias λ for
Gaussians). Both the component choice and ε come from the seeded noise stream, so image i depends only
on (seed, i), as for every model. Checkpoints are plain arrays (npz) plus a JSON config, never pickles.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from omegaconf import MISSING
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

from imgcollapse import faults
from imgcollapse.data import ImageSet, to_uint8
from imgcollapse.errors import require
from imgcollapse.models import SamplingConfig, noise, read_model_config, write_model_config

log = logging.getLogger(__name__)

ARRAYS_FILE = "gmm.npz"
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
ESTIMATORS = ("mle", "unbiased")  # covariances divide by the (effective) sample count, or by it minus one per mean
MAX_FULL_DIM = 1024  # full/tied covariances beyond this many dimensions cost GBs and hours of EM: use PCA
FLOOR_MULTIPLE = 1000  # a fitted variance below this many reg_covar is the floor's, not the data's (variance_stats)


def cholesky_factors(covariances: np.ndarray, covariance_type: str, n_components: int, dim: int) -> np.ndarray:
    """Lower-triangular L_k with L_k L_kᵀ = Σ_k for each component, as a [K, D, D] array."""
    if covariance_type == "full":
        return np.linalg.cholesky(covariances)
    if covariance_type == "tied":
        return np.broadcast_to(np.linalg.cholesky(covariances), (n_components, dim, dim)).copy()
    if covariance_type == "diag":
        return np.stack([np.diag(np.sqrt(c)) for c in covariances])
    return np.sqrt(covariances)[:, None, None] * np.eye(dim)  # spherical: one variance per component


def precisions(precisions_cholesky: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precision matrices from their Cholesky factors (sklearn's own identity, P = U Uᵀ)."""
    if covariance_type in ("full", "tied"):
        return precisions_cholesky @ np.swapaxes(precisions_cholesky, -1, -2)
    return precisions_cholesky**2


def unbias(mixture: GaussianMixture, num_samples: int, reg_covar: float) -> None:
    """Turn EM's maximum-likelihood covariances into unbiased ones in place: each component's scatter divided by
    its effective count minus one (n_k = weight_k x N) instead of n_k (tied: N - K); reg_covar stays added once."""
    m = mixture
    counts = m.weights_ * num_samples
    if m.covariance_type == "tied":
        factor = num_samples / (num_samples - m.n_components)
        eye = np.eye(len(m.covariances_))
        m.covariances_ = (m.covariances_ - reg_covar * eye) * factor + reg_covar * eye
    else:
        factor = counts / np.maximum(counts - 1, 1e-12)
        floor = reg_covar * (np.eye(m.covariances_.shape[-1]) if m.covariance_type == "full" else 1.0)
        shape = (-1,) + (1,) * (m.covariances_.ndim - 1)
        m.covariances_ = (m.covariances_ - floor) * factor.reshape(shape) + floor
    m.precisions_cholesky_ = _compute_precision_cholesky(m.covariances_, m.covariance_type)
    m.precisions_ = precisions(m.precisions_cholesky_, m.covariance_type)


def variance_stats(mixture: GaussianMixture, reg_covar: float) -> dict[str, float]:
    """Per-coordinate variance of the fitted components above the reg_covar floor, weighted by component: its mean
    (`model_variance`), the mean of its log (`model_log_variance`), what the collapse theory predicts
    (imgcollapse/theory.py); and how many coordinates sit at the floor (`model_floor_coordinates`, by component)."""
    m = mixture
    dim = m.means_.shape[1]
    cov = m.covariances_
    if m.covariance_type == "full":
        diag = np.diagonal(cov, axis1=1, axis2=2)
    elif m.covariance_type == "tied":
        diag = np.broadcast_to(np.diag(cov), (m.n_components, dim))
    elif m.covariance_type == "diag":
        diag = cov
    else:
        diag = np.broadcast_to(cov[:, None], (m.n_components, dim))
    # Left out rather than modelled: a coordinate the data leaves constant (the digits' always-blank pixels) fits
    # reg_covar, its samples carry that on and each later fit adds reg_covar again (v_{g+1} = v_g chi^2 / c +
    # reg_covar: about (g + 1) reg_covar after g generations), so its log climbs like log(g + 1) while the theory's
    # falls (the digits' 4 such pixels of 64 added +0.21 by generation 30 against the closed form's -0.30), and its
    # law depends on the generation, which a fit does not know. Below FLOOR_MULTIPLE reg_covar it counts as floor:
    # for ~1,000 generations of the unbiased fit, and for good under the MLE while N < 1,000 (its floor coordinates
    # settle at N reg_covar); a coordinate of the data falls there only once the reg_covar added each generation is
    # >= 0.1% of its variance. So choose reg_covar far below the variances you study: experiment=gaussian_theory
    # sets 1e-12; the default 1e-4 leaves coordinates under 0.1 out of these two columns (a digits GMM's blank and
    # near-blank border pixels, and any a chain collapses that far: model_floor_coordinates counts them).
    above = diag >= FLOOR_MULTIPLE * reg_covar
    weights = m.weights_[:, None] * above  # means over the (component, coordinate) pairs above the floor
    total = weights.sum()
    if total > 0:
        mean_var, mean_log = float((weights * diag).sum() / total), float((weights * np.log(diag)).sum() / total)
    else:  # every coordinate at the floor: none the theory speaks for
        mean_var = mean_log = float("nan")
    return {"model_variance": mean_var, "model_log_variance": mean_log,
            "model_floor_coordinates": float(m.weights_ @ (~above).sum(axis=1))}


@dataclass
class GMMConfig:
    """`model=gmm`: mixture size and covariance (values and their reasons: conf/model/gmm.yaml)."""

    _target_: str = "imgcollapse.models.gmm.GMM"
    n_components: int = MISSING
    covariance_type: str = MISSING
    pca_components: int | None = MISSING
    reg_covar: float = MISSING
    max_iter: int = MISSING
    n_init: int = MISSING
    init: str = MISSING  # only "scratch": EM refits from its data (the key exists so the error can say why)
    estimator: str = MISSING  # ESTIMATORS: how covariances are estimated from the data EM assigns a component
    float_samples: bool = MISSING  # keep samples in float64, unclipped, unrounded, for the next fit (ImageSet.values)

    def check(self) -> None:
        """The model's own keys (sizes that must fit the data are checked in config.validate)."""
        require(self.estimator in ESTIMATORS, "model.estimator", self.estimator, f"one of {list(ESTIMATORS)}")
        require(self.init == "scratch", "model.init", self.init,
                "'scratch' for model=gmm: EM fits the mixture to its training set from a k-means start, so a "
                "warm start from earlier weights converges to the same fit; fine-tuning (base, previous) needs "
                "model=ddpm or model=vae")
        require(self.n_components > 0, "model.n_components", self.n_components, "an integer > 0")
        require(self.covariance_type in COVARIANCE_TYPES, "model.covariance_type", self.covariance_type,
                f"one of {list(COVARIANCE_TYPES)}")
        require(self.reg_covar > 0, "model.reg_covar", self.reg_covar, "> 0 (added to every variance)")
        require(self.max_iter > 0, "model.max_iter", self.max_iter, "an integer > 0")
        require(self.n_init > 0, "model.n_init", self.n_init, "an integer > 0")

    def check_chain(self, *, image_size: int, channels: int, sampling: SamplingConfig) -> None:
        """Its fit with the rest of the chain: PCA and covariance sized by the image's pixels."""
        self.check_pixels(channels * image_size**2)

    def check_data(self, num_train: int) -> None:
        """Generation 0 fits the real pool: it must hold the components and PCA dimensions."""
        require(self.n_components <= num_train, "model.n_components", self.n_components,
                f"at most the training pool's {num_train} images")
        require(self.pca_components is None or self.pca_components <= num_train, "model.pca_components",
                self.pca_components, f"null or at most the training pool's {num_train} images")

    def check_pixels(self, pixels: int) -> None:
        """PCA within the image's pixels; a full or tied covariance small enough to fit in memory."""
        require(self.pca_components is None or 0 < self.pca_components <= pixels, "model.pca_components",
                self.pca_components, f"null (no PCA) or an integer in [1, {pixels}] (the pixels per image)")
        require(self.covariance_type not in ("full", "tied") or (self.pca_components or pixels) <= MAX_FULL_DIM,
                "model.pca_components", self.pca_components,
                f"an integer ≤ {MAX_FULL_DIM} for a {self.covariance_type} covariance of {pixels}-pixel images "
                "(e.g. model.pca_components=64), or model.covariance_type=diag")

    def check_training_size(self, key: str, size: int, why: str) -> None:
        """A training set of `size` images (named by config `key`) must hold the components and PCA dimensions."""
        require(size >= self.n_components, key, size, f"at least model.n_components={self.n_components}: {why}")
        require(self.pca_components is None or size >= self.pca_components, key, size,
                f"at least model.pca_components={self.pca_components}: {why}, and PCA needs that many")


class GMM:
    """Gaussian mixture over pixels (or their top principal components); `fit` runs EM from scratch."""

    Config = GMMConfig
    SAMPLING_KEYS = ("temperature",)

    def __init__(self, config: GMMConfig, *, image_shape: tuple[int, int, int], sampling: SamplingConfig,
                 accelerator: Accelerator | None = None) -> None:  # accelerator: the common interface; EM runs on CPU
        self.config = config
        self.sampling = sampling
        self.image_shape = tuple(int(v) for v in image_shape)
        self.num_classes = None  # unconditional: the chain labels its samples with the metrics classifier
        self.pca: PCA | None = None
        self.mixture: GaussianMixture | None = None

    @property
    def dim(self) -> int:
        """Dimension the mixture lives in: principal components if PCA is on, else pixels."""
        return self.config.pca_components or int(np.prod(self.image_shape))

    def fit(self, data: ImageSet, seed: int) -> dict[str, float]:
        """PCA (if configured) then EM; returns the training set's negative log-likelihood per dimension."""
        if tuple(data.shape) != self.image_shape:
            raise ValueError(f"this GMM was built for images of shape {self.image_shape}, got {data.shape}")
        c = self.config
        if len(data) < c.n_components:
            raise ValueError(f"model.n_components={c.n_components} needs at least that many training images, "
                             f"got {len(data)}")
        x = data.exact().flatten(1).numpy()  # the 8-bit images on [-1, 1], or the exact samples where kept
        self.pca = None
        if c.pca_components:
            if c.pca_components > min(x.shape):
                raise ValueError(f"model.pca_components={c.pca_components} exceeds min(images, pixels) = "
                                 f"{min(x.shape)}")
            self.pca = PCA(n_components=c.pca_components, svd_solver="full", random_state=seed)
            x = self.pca.fit_transform(x)
        self.mixture = GaussianMixture(
            n_components=c.n_components, covariance_type=c.covariance_type, reg_covar=c.reg_covar,
            max_iter=c.max_iter, n_init=c.n_init, random_state=seed,
        )
        with warnings.catch_warnings():  # reported once below, in the log, instead of as a warning per fit
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.mixture.fit(x)
        if not self.mixture.converged_:
            log.warning("EM did not converge in model.max_iter=%d iterations; raise it", c.max_iter)
        if c.estimator == "unbiased":
            unbias(self.mixture, len(x), c.reg_covar)
        return {"train_loss": float(-self.mixture.score(x) / x.shape[1]), "converged": float(self.mixture.converged_),
                **variance_stats(self.mixture, c.reg_covar)}

    def sample(self, n: int, seed: int, labels: torch.Tensor | None = None) -> ImageSet:
        """Draw `n` images; image i depends only on (seed, i). Labels are ignored (unconditional)."""
        if self.mixture is None:
            raise RuntimeError("fit or load the GMM before sampling")
        m, dim = self.mixture, self.dim
        draws = noise((dim + 1,), seed, 0, n).double().numpy()
        # The first coordinate picks the component (its normal CDF is uniform); the rest is ε.
        uniform = torch.special.ndtr(torch.from_numpy(draws[:, 0])).numpy()
        component = np.minimum(np.searchsorted(np.cumsum(m.weights_), uniform), len(m.weights_) - 1)
        if m.covariance_type in ("diag", "spherical"):
            # a diagonal factor only scales each coordinate (the same numbers as multiplying by it): no dim×dim
            # matrix per component, which a diag fit of 3,072-pixel images would hold as GBs
            scale = np.sqrt(m.covariances_)
            x = draws[:, 1:] * (scale[component] if m.covariance_type == "diag" else scale[component][:, None])
        else:
            factors = cholesky_factors(m.covariances_, m.covariance_type, m.n_components, dim)
            # one component at a time: indexing factors by sample would hold n dim×dim matrices (GBs on MNIST)
            x = np.empty((n, dim))
            for k in np.unique(component):
                rows = component == k
                x[rows] = np.einsum("ij,nj->ni", factors[k], draws[rows, 1:])
        x = m.means_[component] + np.sqrt(self.sampling.temperature) * x
        if self.pca is not None:
            x = self.pca.inverse_transform(x)
        images = torch.from_numpy(x).float().clamp(-1, 1).view(n, *self.image_shape)
        faults.reached("sample")
        values = torch.from_numpy(x).view(n, *self.image_shape) if self.config.float_samples else None
        return ImageSet(to_uint8(images), None, None, values)

    # Persistence --------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """The fitted arrays (mixture and PCA) as npz plus the constructor config as JSON."""
        if self.mixture is None:
            raise RuntimeError("nothing to save: the GMM is not fitted")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        m = self.mixture
        arrays = {"weights": m.weights_, "means": m.means_, "covariances": m.covariances_,
                  "precisions_cholesky": m.precisions_cholesky_}
        if self.pca is not None:
            arrays |= {"pca_components": self.pca.components_, "pca_mean": self.pca.mean_,
                       "pca_explained_variance": self.pca.explained_variance_}
        with open(path / ARRAYS_FILE, "wb") as f:
            np.savez(f, **arrays)
        write_model_config(path, self.config, self.image_shape, self.sampling)

    @classmethod
    def load(cls, path: Path, accelerator: Accelerator | None = None) -> GMM:
        """Rebuild the fitted sklearn objects from the saved arrays (score_samples etc. work again)."""
        path = Path(path)
        config, image_shape, sampling = read_model_config(path, cls.Config)
        model = cls(config, image_shape=image_shape, sampling=sampling)
        c = model.config
        with np.load(path / ARRAYS_FILE) as z:
            m = GaussianMixture(n_components=c.n_components, covariance_type=c.covariance_type)
            m.weights_, m.means_, m.covariances_ = z["weights"], z["means"], z["covariances"]
            m.precisions_cholesky_ = z["precisions_cholesky"]
            m.precisions_ = precisions(m.precisions_cholesky_, c.covariance_type)
            m.converged_, m.n_iter_, m.n_features_in_ = True, 0, m.means_.shape[1]
            model.mixture = m
            if "pca_components" in z:
                pca = PCA(n_components=c.pca_components)
                pca.components_, pca.mean_ = z["pca_components"], z["pca_mean"]
                pca.explained_variance_ = z["pca_explained_variance"]
                pca.n_components_, pca.n_features_in_ = len(pca.components_), pca.components_.shape[1]
                pca.whiten = False
                model.pca = pca
        return model
