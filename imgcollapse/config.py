"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore, and one `validate` pass.

The schemas carry types only; every value, with a line of why, lives in the YAML under `conf/`.

The YAML files in `conf/` extend these schemas (`defaults: [/schema/<group>/<name>@_here_]`), so an
unknown key or a wrong type fails when Hydra composes the config, naming the key. Ranges, enums and
combinations that cannot work are checked by `validate` before any data is loaded or model trained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class UserError(Exception):
    """A mistake in what the user asked for: reported as one clear message, never a traceback."""


class ConfigError(UserError):
    """A config value that cannot work: names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")
        self.key = key


# Datasets ---------------------------------------------------------------------------------------
@dataclass
class DigitsConfig:
    _target_: str = "imgcollapse.data.digits.load_digits"
    image_size: int = MISSING
    channels: int = MISSING
    num_heldout: int = MISSING
    split_seed: int = MISSING
    long_tail: float = MISSING


@dataclass
class TorchvisionConfig:
    _target_: str = "imgcollapse.data.torchvision_sets.load_torchvision"
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    image_size: int = MISSING
    channels: int = MISSING
    limit: int | None = MISSING
    num_heldout: int | None = MISSING
    split_seed: int = MISSING
    long_tail: float = MISSING


@dataclass
class CIFAR10Config(TorchvisionConfig):
    verify_md5: bool = MISSING


@dataclass
class FolderConfig:
    _target_: str = "imgcollapse.data.folder.load_folder"
    path: str | None = MISSING
    image_size: int = MISSING
    channels: int = MISSING
    heldout_fraction: float = MISSING
    split_seed: int = MISSING
    skip_bad: bool = MISSING
    long_tail: float = MISSING
    cache_dir: str | None = MISSING


# Models -----------------------------------------------------------------------------------------
@dataclass
class TrainingConfig:
    """Keys of the training loop the torch models share (models/train.py)."""

    block_out_channels: list[int] = MISSING
    train_steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    warmup_steps: int = MISSING
    ema_decay: float | None = MISSING
    grad_clip: float | None = MISSING
    sample_batch_size: int = MISSING


@dataclass
class DDPMConfig(TrainingConfig):
    _target_: str = "imgcollapse.models.ddpm.DDPM"
    layers_per_block: int = MISSING
    attention: bool = MISSING
    num_classes: int | None = MISSING
    class_dropout: float = MISSING
    beta_schedule: str = MISSING
    num_train_timesteps: int = MISSING
    prediction_type: str = MISSING
    snr_gamma: float | None = MISSING
    sampler: str = MISSING
    sampling_steps: int = MISSING
    guidance: float = MISSING
    compile: bool = MISSING


@dataclass
class VAEConfig(TrainingConfig):
    _target_: str = "imgcollapse.models.vae.VAE"
    latent_dim: int = MISSING
    likelihood: str = MISSING
    beta: float = MISSING
    temperature: float = MISSING


@dataclass
class GMMConfig:
    _target_: str = "imgcollapse.models.gmm.GMM"
    n_components: int = MISSING
    covariance_type: str = MISSING
    pca_components: int | None = MISSING
    reg_covar: float = MISSING
    max_iter: int = MISSING
    n_init: int = MISSING
    temperature: float = MISSING


# Regimes, sampling, metrics, report -------------------------------------------------------------
@dataclass
class RegimeConfig:
    _target_: str = "imgcollapse.regimes.Regime"
    kind: str = MISSING
    real_fraction: float = MISSING
    subsample: int | None = MISSING
    curation: str = MISSING
    keep_fraction: float = MISSING


@dataclass
class SamplingConfig:
    sampler: str = MISSING
    steps: int = MISSING
    guidance: float = MISSING
    temperature: float = MISSING
    batch_size: int = MISSING
    conditions: str = MISSING


@dataclass
class MetricsConfig:
    extractors: Any = MISSING  # "auto" or a list drawn from imgcollapse.metrics.EXTRACTORS
    num_samples: int | None = MISSING
    nearest_k: int = MISSING
    kid_subsets: int = MISSING
    kid_subset_size: int = MISSING
    near_copy_ratio: float = MISSING
    tail_fraction: float = MISSING
    lost_threshold: float = MISSING
    classifier_epochs: int = MISSING
    classifier_seed: int = MISSING
    inception_weights: str = MISSING
    inception_source: str = MISSING
    inception_download: bool = MISSING
    inception_batch_size: int = MISSING


@dataclass
class ReportConfig:
    grid_size: int = MISSING
    strip_seeds: int = MISSING


@dataclass
class AcceleratorConfig:
    mixed_precision: str = MISSING


@dataclass
class LoggerConfig:
    kind: str = MISSING
    images: bool = MISSING


@dataclass
class Config:
    generation: int = MISSING
    seed: int = MISSING
    num_synthetic: int = MISSING
    cache_dir: str = MISSING
    threads: int | None = MISSING
    resume: str = MISSING
    dataset: Any = MISSING
    model: Any = MISSING
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    accelerator: AcceleratorConfig = field(default_factory=AcceleratorConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


SCHEMAS = {
    "dataset": {"digits": DigitsConfig, "mnist": TorchvisionConfig, "fashion_mnist": TorchvisionConfig,
                "cifar10": CIFAR10Config, "folder": FolderConfig},
    "model": {"ddpm": DDPMConfig, "vae": VAEConfig, "gmm": GMMConfig},
}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent; run.py calls it before composing)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)


def run_name(override_dirname: str) -> str:
    """A directory name from the command-line overrides: the same command maps to the same run dir."""
    name = re.sub(r"[^A-Za-z0-9=,._+-]+", "_", override_dirname).strip("_")
    return name[:200] or "default"


# Validation -------------------------------------------------------------------------------------
def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _validate_dataset(d: Any) -> None:
    """Checks every dataset schema shares (size, channels, long tail), then each one's own keys."""
    from imgcollapse.data.digits import DIGITS
    from imgcollapse.data.torchvision_sets import NAMES

    _require(d.image_size > 0, "dataset.image_size", d.image_size, "an integer > 0")
    _require(d.channels in (1, 3), "dataset.channels", d.channels, "1 or 3")
    _require(d.long_tail >= 0, "dataset.long_tail", d.long_tail, "a Zipf exponent ≥ 0 (0: classes as they are)")
    _require(0 <= d.split_seed < 2**32, "dataset.split_seed", d.split_seed, "an integer in [0, 2**32)")
    if isinstance(d, DigitsConfig):
        _require(10 <= d.num_heldout <= DIGITS - 10, "dataset.num_heldout", d.num_heldout,
                 f"an integer in [10, {DIGITS - 10}]: each of the 10 classes on both sides of the {DIGITS:,} digits")
    if isinstance(d, TorchvisionConfig):
        _require(d.name in NAMES, "dataset.name", d.name, f"one of {sorted(NAMES)}")
        _require(bool(d.root), "dataset.root", d.root, "the folder torchvision reads (and downloads into)")
        _require(d.limit is None or d.limit >= 10, "dataset.limit", d.limit,
                 "null (torchvision's whole train split) or an integer ≥ 10 (one image per class)")
        _require(d.num_heldout is None or d.num_heldout >= 10, "dataset.num_heldout", d.num_heldout,
                 "null (torchvision's whole test split) or an integer ≥ 10 (one image per class)")
    if isinstance(d, FolderConfig):
        _require(d.path is not None and d.path != "", "dataset.path", d.path, "a folder of images: dataset.path=DIR")
        _require(0 < d.heldout_fraction < 1, "dataset.heldout_fraction", d.heldout_fraction,
                 "a fraction in (0, 1): the share of the folder's images held out for scoring")


def validate(cfg: DictConfig) -> Config:
    """Check ranges, enums and combinations; return the typed config. Raises ConfigError."""
    from imgcollapse.chain import CONDITIONS
    from imgcollapse.models.ddpm import SAMPLERS
    from imgcollapse.regimes import CURATIONS, KINDS
    from imgcollapse.resume import RESUME_MODES

    config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    _require(config.generation >= 0, "generation", config.generation, "an integer ≥ 0 (the last generation)")
    _require(0 <= config.seed < 2**32, "seed", config.seed, "an integer in [0, 2**32)")
    _require(config.num_synthetic > 0, "num_synthetic", config.num_synthetic, "an integer > 0")
    _require(config.threads is None or config.threads > 0, "threads", config.threads, "null (all cores) or > 0")
    _require(config.resume in RESUME_MODES, "resume", config.resume,
             f"one of {list(RESUME_MODES)} (force: resume a run dir with a config other than its own)")
    _require(bool(config.cache_dir), "cache_dir", config.cache_dir, "a folder (metrics classifier, references)")

    d = config.dataset
    _validate_dataset(d)

    # before the model's keys: model.sample_batch_size defaults to ${sampling.batch_size}, the key users set
    s = config.sampling
    _require(s.sampler in SAMPLERS, "sampling.sampler", s.sampler, f"one of {sorted(SAMPLERS)}")
    _require(s.steps > 0, "sampling.steps", s.steps, "an integer > 0")
    _require(s.batch_size > 0, "sampling.batch_size", s.batch_size, "an integer > 0")
    _require(s.guidance >= 0, "sampling.guidance", s.guidance, "≥ 0 (0: plain conditional sampling)")
    _require(s.temperature > 0, "sampling.temperature", s.temperature, "> 0")

    m = config.model
    if isinstance(m, TrainingConfig):
        _validate_training(m)
    if isinstance(m, DDPMConfig):
        _validate_ddpm(m, d)
    _validate_vae(m)
    _validate_gmm(m, d)
    _validate_sampling_bias(config)

    r = config.regime
    _require(r.kind in KINDS, "regime.kind", r.kind, f"one of {list(KINDS)}")
    _require(0 <= r.real_fraction <= 1, "regime.real_fraction", r.real_fraction, "a fraction in [0, 1]")
    _require(r.subsample is None or r.subsample > 0, "regime.subsample", r.subsample, "null or an integer > 0")
    _require(r.curation in CURATIONS, "regime.curation", r.curation, f"one of {list(CURATIONS)}")
    _require(0 < r.keep_fraction <= 1, "regime.keep_fraction", r.keep_fraction,
             "a fraction in (0, 1]: the share of candidates curation keeps")
    _require(s.conditions in CONDITIONS, "sampling.conditions", s.conditions, f"one of {list(CONDITIONS)}")

    _validate_model_extras(m, s)
    _validate_regime_keys(r)
    _validate_training_sets(config)
    _validate_metrics(config.metrics, config.num_synthetic)
    _require(config.report.grid_size > 0, "report.grid_size", config.report.grid_size, "an integer > 0")
    _require(config.report.strip_seeds > 0, "report.strip_seeds", config.report.strip_seeds, "an integer > 0")
    _require(config.accelerator.mixed_precision in ("auto", "no", "fp16", "bf16"), "accelerator.mixed_precision",
             config.accelerator.mixed_precision, "one of ['auto', 'no', 'fp16', 'bf16']")
    _require(config.accelerator.mixed_precision != "fp16" or torch.cuda.is_available(), "accelerator.mixed_precision",
             config.accelerator.mixed_precision, "'no' or 'bf16' without a CUDA GPU (fp16 needs one)")
    _validate_logger(config.logger)
    return config


def _validate_training(m: TrainingConfig) -> None:
    """Keys of the shared torch training loop (DDPM, VAE)."""
    _require(len(m.block_out_channels) > 0 and all(c > 0 for c in m.block_out_channels),
             "model.block_out_channels", m.block_out_channels, "a non-empty list of positive widths")
    _require(m.train_steps > 0, "model.train_steps", m.train_steps, "an integer > 0")
    _require(m.batch_size > 0, "model.batch_size", m.batch_size, "an integer > 0")
    _require(m.lr > 0, "model.lr", m.lr, "a learning rate > 0")
    _require(0 <= m.warmup_steps <= m.train_steps, "model.warmup_steps", m.warmup_steps,
             f"an integer in [0, model.train_steps={m.train_steps}]")
    _require(m.ema_decay is None or 0 < m.ema_decay < 1, "model.ema_decay", m.ema_decay, "null or in (0, 1)")
    _require(m.grad_clip is None or m.grad_clip > 0, "model.grad_clip", m.grad_clip, "null (no clipping) or > 0")
    _require(m.sample_batch_size > 0, "model.sample_batch_size", m.sample_batch_size, "an integer > 0")


def _validate_ddpm(m: DDPMConfig, d: Any) -> None:
    from imgcollapse.models.ddpm import unet_downsampling

    factor = 2 ** unet_downsampling(m.block_out_channels)
    _require(d.image_size % factor == 0, "dataset.image_size", d.image_size,
             f"a multiple of {factor}, since model.block_out_channels={m.block_out_channels} "
             f"halves the image {unet_downsampling(m.block_out_channels)} times")
    _require(m.layers_per_block >= 1, "model.layers_per_block", m.layers_per_block, "an integer ≥ 1")
    _require(m.prediction_type in ("epsilon", "v_prediction"), "model.prediction_type", m.prediction_type,
             "one of ['epsilon', 'v_prediction']")
    _require(m.snr_gamma is None or m.snr_gamma > 0, "model.snr_gamma", m.snr_gamma, "null or > 0")
    _require(m.num_classes is None or m.num_classes > 1, "model.num_classes", m.num_classes,
             "null (unconditional) or the dataset's class count (> 1)")
    _require(0 <= m.class_dropout < 1, "model.class_dropout", m.class_dropout, "a fraction in [0, 1)")


def _validate_model_extras(m: Any, s: SamplingConfig) -> None:
    """The sampling keys the model takes (after sampling's own checks, so a bad sampling.* value is named as
    such, not as the model key it flows into)."""
    from imgcollapse.models.ddpm import BETA_SCHEDULES, SAMPLERS

    if hasattr(m, "temperature"):
        _require(m.temperature > 0, "model.temperature", m.temperature, "> 0 (the sampling temperature)")
    if not isinstance(m, DDPMConfig):
        return
    _require(m.beta_schedule in BETA_SCHEDULES, "model.beta_schedule", m.beta_schedule,
             f"one of {list(BETA_SCHEDULES)} (what diffusers' DDPM, DDIM and DPM-Solver schedulers all take)")
    _require(m.num_train_timesteps >= 2, "model.num_train_timesteps", m.num_train_timesteps, "an integer ≥ 2")
    _require(s.steps <= m.num_train_timesteps, "sampling.steps", s.steps,
             f"at most model.num_train_timesteps={m.num_train_timesteps}")
    _require(m.sampler in SAMPLERS, "model.sampler", m.sampler, f"one of {sorted(SAMPLERS)}")
    _require(1 <= m.sampling_steps <= m.num_train_timesteps, "model.sampling_steps", m.sampling_steps,
             f"an integer in [1, model.num_train_timesteps={m.num_train_timesteps}]")
    _require(m.guidance >= 0, "model.guidance", m.guidance, "≥ 0")


def _validate_regime_keys(r: RegimeConfig) -> None:
    """A key the chosen regime ignores must keep its neutral value, so a typo'd experiment does not run silently."""
    _require(r.subsample is None or r.kind == "accumulate", "regime.subsample", r.subsample,
             f"null under regime={r.kind}: only regime=accumulate subsamples")
    _require(r.real_fraction == 0 or r.kind in ("fresh", "augment"), "regime.real_fraction", r.real_fraction,
             f"0 under regime={r.kind}, which mixes in no real images at a fraction (regime=fresh or augment do)")


def _validate_logger(logger: LoggerConfig) -> None:
    from imgcollapse.tracking import KINDS, tracker_available

    _require(logger.kind in KINDS, "logger.kind", logger.kind, f"one of {list(KINDS)} (choose with logger=NAME)")
    _require(tracker_available(logger.kind), "logger.kind", logger.kind,
             f"a tracker whose package is installed: pip install 'imgcollapse[{logger.kind}]'")


def _validate_metrics(mt: MetricsConfig, num_synthetic: int) -> None:
    from imgcollapse.metrics import EXTRACTORS
    from imgcollapse.metrics.features import INCEPTION_SOURCES

    allowed = f"'auto' or a non-empty list drawn from {list(EXTRACTORS)}"
    if isinstance(mt.extractors, str):
        _require(mt.extractors == "auto", "metrics.extractors", mt.extractors, allowed)
    else:
        names = list(mt.extractors)
        _require(0 < len(names) == len(set(names)) and all(e in EXTRACTORS for e in names),
                 "metrics.extractors", names, allowed)
    _require(mt.nearest_k >= 1, "metrics.nearest_k", mt.nearest_k, "an integer ≥ 1")
    _require(num_synthetic > mt.nearest_k + 1, "metrics.nearest_k", mt.nearest_k,
             f"smaller than num_synthetic - 1 = {num_synthetic - 1}: prdc needs k neighbours of each sample")
    _require(mt.num_samples is None or mt.nearest_k + 1 < mt.num_samples <= num_synthetic, "metrics.num_samples",
             mt.num_samples, f"null (all samples) or an integer in ({mt.nearest_k + 1}, num_synthetic={num_synthetic}]")
    _require(mt.kid_subsets >= 1, "metrics.kid_subsets", mt.kid_subsets, "an integer ≥ 1")
    _require(mt.kid_subset_size >= 2, "metrics.kid_subset_size", mt.kid_subset_size, "an integer ≥ 2")
    _require(0 < mt.near_copy_ratio <= 1, "metrics.near_copy_ratio", mt.near_copy_ratio, "a fraction in (0, 1]")
    _require(0 < mt.tail_fraction <= 1, "metrics.tail_fraction", mt.tail_fraction, "a fraction in (0, 1]")
    _require(0 < mt.lost_threshold <= 1, "metrics.lost_threshold", mt.lost_threshold, "a fraction in (0, 1]")
    _require(mt.classifier_epochs >= 1, "metrics.classifier_epochs", mt.classifier_epochs, "an integer ≥ 1")
    _require(mt.classifier_seed >= 0, "metrics.classifier_seed", mt.classifier_seed, "an integer ≥ 0")
    _require(bool(mt.inception_weights), "metrics.inception_weights", mt.inception_weights, "a file path")
    _require(mt.inception_source in INCEPTION_SOURCES, "metrics.inception_source", mt.inception_source,
             f"one of {list(INCEPTION_SOURCES)}")
    _require(mt.inception_batch_size > 0, "metrics.inception_batch_size", mt.inception_batch_size, "an integer > 0")


def _validate_vae(m: Any) -> None:
    from imgcollapse.models.vae import LIKELIHOODS

    if not isinstance(m, VAEConfig):
        return
    _require(m.latent_dim > 0, "model.latent_dim", m.latent_dim, "an integer > 0")
    _require(m.likelihood in LIKELIHOODS, "model.likelihood", m.likelihood, f"one of {list(LIKELIHOODS)}")
    _require(m.beta > 0, "model.beta", m.beta, "> 0 (1: the plain ELBO)")


def _validate_gmm(m: Any, d: Any) -> None:
    from imgcollapse.models.gmm import COVARIANCE_TYPES, MAX_FULL_DIM

    if not isinstance(m, GMMConfig):
        return
    _require(m.n_components > 0, "model.n_components", m.n_components, "an integer > 0")
    _require(m.covariance_type in COVARIANCE_TYPES, "model.covariance_type", m.covariance_type,
             f"one of {list(COVARIANCE_TYPES)}")
    pixels = getattr(d, "channels", 1) * getattr(d, "image_size", 1) ** 2
    _require(m.pca_components is None or 0 < m.pca_components <= pixels, "model.pca_components",
             m.pca_components, f"null (no PCA) or an integer in [1, {pixels}] (the pixels per image)")
    _require(m.covariance_type not in ("full", "tied") or (m.pca_components or pixels) <= MAX_FULL_DIM,
             "model.pca_components", m.pca_components,
             f"an integer ≤ {MAX_FULL_DIM} for a {m.covariance_type} covariance of {pixels}-pixel images "
             "(e.g. model.pca_components=64), or model.covariance_type=diag")
    _require(m.reg_covar > 0, "model.reg_covar", m.reg_covar, "> 0 (added to every variance)")
    _require(m.max_iter > 0, "model.max_iter", m.max_iter, "an integer > 0")
    _require(m.n_init > 0, "model.n_init", m.n_init, "an integer > 0")


def _validate_sampling_bias(config: Config) -> None:
    """Sampling bias must be one the configured model understands: guidance or temperature, not both."""
    m, s = config.model, config.sampling
    _require(s.guidance == 0 or bool(getattr(m, "num_classes", None)), "sampling.guidance", s.guidance,
             "0 unless the model is class-conditional (model=ddpm with model.num_classes set)")
    _require(s.temperature == 1 or hasattr(m, "temperature"), "sampling.temperature", s.temperature,
             "1.0 for this model, which has no temperature (diffusion's sampling bias is sampling.guidance)")


def validate_data(config: Config, num_train: int, num_classes: int | None) -> None:
    """Checks that need the loaded data (the training pool's size, its class count or None if unlabelled); run
    before the metrics classifier or any model trains. Raises ConfigError."""
    m, r = config.model, config.regime
    wanted = getattr(m, "num_classes", None)
    _require(not wanted or num_classes is not None, "model.num_classes", wanted,
             "null: this dataset has no class labels (a folder gets them from class subfolders), so a model "
             "cannot be conditioned on them")
    _require(not wanted or wanted == num_classes, "model.num_classes", wanted,
             f"null (unconditional) or the dataset's class count, {num_classes}")
    if isinstance(m, GMMConfig):  # generation 0 fits the real pool
        _require(m.n_components <= num_train, "model.n_components", m.n_components,
                 f"at most the training pool's {num_train} images")
        _require(m.pca_components is None or m.pca_components <= num_train, "model.pca_components",
                 m.pca_components, f"null or at most the training pool's {num_train} images")
    extractors = config.metrics.extractors
    has_classifier = num_classes is not None and (extractors == "auto" or "classifier" in extractors)
    _require(r.curation == "none" or has_classifier, "regime.curation", r.curation,
             "'none' here: curation's verifier is the metrics classifier, which needs labelled data and "
             "'classifier' in metrics.extractors")
    pool = num_train + config.num_synthetic  # what accumulate draws from at generation 1, its smallest
    _require(r.kind != "accumulate" or r.subsample is None or r.subsample <= pool, "regime.subsample", r.subsample,
             f"null or at most {pool}: generation 1 draws from the real pool's {num_train} images and "
             f"num_synthetic={config.num_synthetic} samples")


def _validate_training_sets(config: Config) -> None:
    """Each generation after 0 trains on num_synthetic images (accumulate: on `subsample`, or on everything so
    far): that set must hold a batch, and a GMM's components and PCA dimensions."""
    m, r = config.model, config.regime
    if config.generation == 0:  # generation 0 trains on the real pool (checked in validate_data)
        return
    if r.kind == "accumulate" and r.subsample is None:  # real pool + all samples: never smaller than generation 0's
        return
    key, size = ("regime.subsample", r.subsample) if r.kind == "accumulate" else ("num_synthetic", config.num_synthetic)
    why = f"each generation after 0 trains on {key}={size} images under regime={r.kind}"
    batch = getattr(m, "batch_size", None)
    _require(batch is None or size >= batch, key, size,
             f"at least model.batch_size={batch}: {why}, and a batch should not repeat them")
    if isinstance(m, GMMConfig):
        _require(size >= m.n_components, key, size, f"at least model.n_components={m.n_components}: {why}")
        _require(m.pca_components is None or size >= m.pca_components, key, size,
                 f"at least model.pca_components={m.pca_components}: {why}, and PCA needs that many")
