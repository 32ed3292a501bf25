"""The Gaussian fit -> sample loop against its closed form, for many seeds at once (numpy, seconds).

Generation 0 is N(mu_0, sigma_0^2 I) in `dim` coordinates; generation g + 1 fits a Gaussian to `num_samples` (N)
draws of generation g and is that fit. Each coordinate's variance then follows its own chain (the marginal of
coordinate j is N(mu_j, Sigma_jj), whatever the correlations, so a full-covariance fit's diagonal obeys the same
law), with sigma_{g+1}^2 = sigma_g^2 * chi^2_{N-1} / c, c = N - 1 (unbiased estimator) or N (maximum likelihood):

    E[sigma_g^2]     = sigma_0^2 * ((N - 1) / c)^g
    E[log sigma_g^2] = log sigma_0^2 + g * (psi((N - 1) / 2) + log 2 - log c)

(E[chi^2_k] = k, E[log chi^2_k] = psi(k / 2) + log 2.) So the unbiased fit keeps the mean variance exactly while
its log drifts down by g * (psi((N-1)/2) - log((N-1)/2)) ~ -g / (N - 1): almost every chain collapses although the
average does not; the MLE loses a factor (N - 1) / N of the variance on average every generation as well.

`simulate` runs that loop in numpy; `kit_chain_variances` runs the kit's own chain instead (model=gmm: one
full-covariance component fitted by scikit-learn's EM, `estimator`, `reg_covar`, float samples passed on), so the
closed forms check the code that the `gaussian_theory` preset runs, not a copy of the formula.

`python -m imgcollapse.theory [--estimator unbiased|mle] [--num-samples N] [--seeds S] [--generations G]
[--dim D] [--kit] [--out DIR]` writes theory.csv and theory.png (the measured means with 95% intervals across seeds
against the closed forms) to DIR.
"""

from __future__ import annotations

import argparse
import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import digamma
from scipy.stats import t as student_t

log = logging.getLogger(__name__)

ESTIMATORS = ("unbiased", "mle")  # the variance divides the sum of squares by N - 1, or by N


def divisor(estimator: str, num_samples: int) -> int:
    """c in sigma^2 = sum of squared deviations / c."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is not one of {list(ESTIMATORS)}")
    if num_samples < 2:
        raise ValueError(f"num_samples={num_samples}: a variance needs at least 2 samples")
    return num_samples - 1 if estimator == "unbiased" else num_samples


def closed_form(estimator: str, num_samples: int, generations: np.ndarray, var0: float = 1.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """(E[sigma_g^2], E[log sigma_g^2]) of one coordinate at each generation g in `generations`."""
    g = np.asarray(generations, dtype=float)
    c = divisor(estimator, num_samples)
    k = num_samples - 1  # degrees of freedom of the sum of squared deviations from the sample mean
    mean_var = var0 * (k / c) ** g
    mean_log_var = np.log(var0) + g * (digamma(k / 2) + np.log(2) - np.log(c))
    return mean_var, mean_log_var


def simulate(estimator: str, num_samples: int, generations: int, seeds: int, dim: int = 1, var0: float = 1.0,
             seed: int = 0) -> np.ndarray:
    """Fitted variances [generations + 1, seeds, dim]: `seeds` independent chains of the fit -> sample loop, each
    fitting a `dim`-coordinate Gaussian (mean and per-coordinate variance) to `num_samples` draws of the last fit."""
    c = divisor(estimator, num_samples)
    rng = np.random.default_rng(seed)
    mean = np.zeros((seeds, dim))
    var = np.full((seeds, dim), float(var0))
    out = np.empty((generations + 1, seeds, dim))
    out[0] = var
    for g in range(1, generations + 1):
        x = mean[:, None, :] + np.sqrt(var)[:, None, :] * rng.standard_normal((seeds, num_samples, dim))
        mean = x.mean(axis=1)
        var = ((x - mean[:, None, :]) ** 2).sum(axis=1) / c
        out[g] = var
    return out


def kit_chain_variances(estimator: str, num_samples: int, generations: int, seeds: int, dim: int = 1,
                        var0: float = 1.0, reg_covar: float = 1e-9, seed: int = 0, covariance_type: str = "full"
                        ) -> np.ndarray:
    """Fitted variances [generations + 1, seeds, dim] as `simulate` returns them, from `seeds` chains of the kit's own
    GMM (one component, `estimator`, float samples): "full" fits each chain apart (~10 ms a fit), "diag" all at once."""
    import torch

    from imgcollapse.images import ImageSet, to_uint8
    from imgcollapse.models import SamplingConfig
    from imgcollapse.models.gmm import GMM, GMMConfig

    divisor(estimator, num_samples)  # the same refusals as the idealised loop
    if covariance_type not in ("full", "diag"):
        raise ValueError(f"covariance_type={covariance_type!r}: 'full' or 'diag' (the others tie coordinates)")
    # conf/model/gmm.yaml's EM settings; reg_covar is added to every fitted variance once a generation, so the mean
    # variance gains at most g * reg_covar over the closed form (1e-9: far below any interval here)
    config = GMMConfig(n_components=1, covariance_type=covariance_type, pca_components=None, reg_covar=reg_covar,
                       max_iter=100, n_init=1, init="scratch", estimator=estimator, float_samples=True)
    config.check()
    # the GMM reads only the temperature; the rest is conf/config.yaml's sampling node
    sampling = SamplingConfig(sampler="dpm++", steps=10, guidance=0.0, temperature=1.0, batch_size=128,
                              conditions="real")
    # A diagonal fit and its sampler treat every coordinate apart (own mean, own variance, own noise), so one diag
    # model of `seeds` x `dim` coordinates is that many independent chains; a full fit ties a chain's coordinates
    # through its covariance, so each chain needs its own model.
    blocks, rows = (1, seeds) if covariance_type == "diag" else (seeds, 1)
    shape = (1, rows, dim)
    out = np.empty((generations + 1, seeds, dim))
    out[0] = var0  # generation 0 is the source, N(0, var0 I); generation g is the kit's g-th fit
    for b in range(blocks):
        x = torch.from_numpy(np.sqrt(var0) * np.random.default_rng([seed, b]).standard_normal((num_samples, *shape)))
        data = ImageSet(to_uint8(x.float().clamp(-1, 1)), values=x)
        model = GMM(config, image_shape=shape, sampling=sampling)
        for g in range(1, generations + 1):
            fit_seed, sample_seed = (int(v) for v in np.random.SeedSequence([seed, b, g]).generate_state(2) >> 1)
            model.fit(data, seed=fit_seed)
            cov = model.mixture.covariances_[0]
            out[g, b * rows:(b + 1) * rows] = (np.diagonal(cov) if cov.ndim == 2 else cov).reshape(rows, dim)
            data = model.sample(num_samples, seed=sample_seed)  # `values`: the exact floats the next fit reads
    return out


@dataclass
class Interval:
    mean: np.ndarray  # [generations + 1]
    low: np.ndarray
    high: np.ndarray


def interval(values: np.ndarray, level: float = 0.95) -> Interval:
    """Mean across seeds and its `level` t-interval, per generation, from values [generations + 1, seeds, dim]
    (coordinates are averaged within a seed first, so the interval needs only independence across seeds)."""
    per_seed = values.mean(axis=2)
    n = per_seed.shape[1]
    mean = per_seed.mean(axis=1)
    half = student_t.ppf(0.5 + level / 2, n - 1) * per_seed.std(axis=1, ddof=1) / np.sqrt(n)
    return Interval(mean, mean - half, mean + half)


def run(estimator: str, num_samples: int, generations: int, seeds: int, dim: int, out: Path, seed: int = 0,
        kit: bool = False) -> list[dict[str, float]]:
    """Simulate (`kit`: run the kit's GMM chain), compare with the closed form, write theory.csv and theory.png to
    `out`; returns the rows."""
    chains = kit_chain_variances if kit else simulate
    var = chains(estimator, num_samples, generations, seeds, dim, seed=seed)
    measured_var, measured_log = interval(var), interval(np.log(var))
    g = np.arange(generations + 1)
    expected_var, expected_log = closed_form(estimator, num_samples, g)
    rows = [{"generation": int(i), "var_mean": measured_var.mean[i], "var_low": measured_var.low[i],
             "var_high": measured_var.high[i], "var_closed_form": expected_var[i],
             "log_var_mean": measured_log.mean[i], "log_var_low": measured_log.low[i],
             "log_var_high": measured_log.high[i], "log_var_closed_form": expected_log[i]} for i in g]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "theory.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, estimator, num_samples, seeds, dim, out / "theory.png", "the kit's GMM" if kit else "numpy")
    return rows


def _plot(rows: list[dict[str, float]], estimator: str, num_samples: int, seeds: int, dim: int, path: Path,
          source: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = [r["generation"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "var", "σ²_g"), (axes[1], "log_var", "log σ²_g")):
        ax.fill_between(g, [r[f"{key}_low"] for r in rows], [r[f"{key}_high"] for r in rows], alpha=0.3,
                        label="measured mean, 95% interval")
        ax.plot(g, [r[f"{key}_mean"] for r in rows], lw=1)
        ax.plot(g, [r[f"{key}_closed_form"] for r in rows], "k--", lw=1, label="closed form")
        ax.set_xlabel("generation")
        ax.set_ylabel(f"mean of {label}")
        ax.legend(fontsize=8)
    fig.suptitle(f"{estimator} fit ({source}), N = {num_samples} samples, {seeds} seeds × {dim} coordinates",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimator", choices=ESTIMATORS, default="unbiased")
    parser.add_argument("--num-samples", type=int, default=100, help="N: samples each generation fits")
    parser.add_argument("--generations", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=2000, help="independent chains")
    parser.add_argument("--dim", type=int, default=1, help="coordinates per chain (each follows the same law)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kit", action="store_true",
                        help="run the kit's own GMM chain (~10 ms a fit: --seeds 1000 --generations 10 takes ~2 min)")
    parser.add_argument("--out", type=Path, default=Path("outputs/theory"))
    args = parser.parse_args(argv)
    rows = run(args.estimator, args.num_samples, args.generations, args.seeds, args.dim, args.out, seed=args.seed,
               kit=args.kit)
    inside = sum(r["log_var_low"] <= r["log_var_closed_form"] <= r["log_var_high"] for r in rows)
    print(f"{args.out / 'theory.png'}: closed form of E[log sigma^2] inside the 95% interval at {inside} of "
          f"{len(rows)} generations")


if __name__ == "__main__":
    main()
