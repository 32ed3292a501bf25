"""The run's configuration: the top-level schema, one `validate` pass, and one function that builds components.

Each component owns its typed config (a dataclass that is both its Hydra schema and its constructor's
argument, with its own `check()`): datasets in `data/`, models in `models/`, regimes in `regimes.py`,
metrics in `metrics/`, the tracker in `tracking.py`, sampling in `models/__init__.py`. This module registers
them in Hydra's ConfigStore, so the YAML files in `conf/` extend them (`defaults: [/schema/<group>/<name>@_here_]`)
and an unknown key or a wrong type fails when Hydra composes the config, naming the key. `validate` runs
every component's own check and then the checks that span components, before any data is loaded or model
trained; `validate_data` the few that need the loaded data. Every value, with a line of why, lives in the YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from imgcollapse import metric_facts
from imgcollapse.data import DatasetConfig
from imgcollapse.data.digits import DigitsConfig
from imgcollapse.data.folder import FolderConfig
from imgcollapse.data.torchvision_sets import CIFAR10Config, TorchvisionConfig
from imgcollapse.errors import ConfigError, UserError, exit_codes_text, require  # noqa: F401  (ConfigError, UserError: their old home)
from imgcollapse.metrics import MetricsConfig
from imgcollapse.models import SamplingConfig
from imgcollapse.models.ddpm import DDPMConfig
from imgcollapse.models.gmm import GMMConfig
from imgcollapse.models.vae import VAEConfig
from imgcollapse.regimes import (
    AccumulateConfig,
    AugmentConfig,
    ContaminatedConfig,
    FreshConfig,
    RealPlusConfig,
    RegimeConfig,
    ReplaceConfig,
)
from imgcollapse.resume import RESUME_MODES, is_ignored
from imgcollapse.tracking import LoggerConfig

CONF_DIR = Path(__file__).resolve().parent / "conf"  # shipped inside the package: a wheel finds it
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
# not chosen by users of a chain: Hydra's own, typed schemas, debug sizes, studies (imgcollapse-study study=NAME)
HIDDEN_GROUPS = ("hydra", "schema", "debug_model", "debug_sampling", "study")


@dataclass
class ReportConfig:
    """`report.*`: what each generation draws and how often the report is redrawn."""

    grid_size: int = MISSING
    strip_seeds: int = MISSING
    draw: bool = MISSING
    redraw_seconds: float = MISSING

    def check(self) -> None:
        require(self.grid_size > 0, "report.grid_size", self.grid_size, "an integer > 0")
        require(self.strip_seeds > 0, "report.strip_seeds", self.strip_seeds, "an integer > 0")
        require(self.redraw_seconds >= 0, "report.redraw_seconds", self.redraw_seconds,
                "≥ 0 (0: redraw after every generation)")


@dataclass
class AcceleratorConfig:
    """`accelerator.*`: the precision accelerate trains in."""

    mixed_precision: str = MISSING

    def check(self) -> None:
        mp = self.mixed_precision
        require(mp in MIXED_PRECISION, "accelerator.mixed_precision", mp, f"one of {list(MIXED_PRECISION)}")
        require(mp != "fp16" or torch.cuda.is_available(), "accelerator.mixed_precision", mp,
                "'no' or 'bf16' without a CUDA GPU (fp16 needs one)")


@dataclass
class ChainConfig:
    """`chain.*`: which model family trains each generation."""

    models: list[str] | None = MISSING  # families in turn (generation g: models[g % len]); None: `model` every time
    population: list[str] | None = MISSING  # families trained side by side every generation, samples pooled
    share_gen0: str | None = MISSING  # a run dir whose finished generation 0 this chain starts from (studies)


@dataclass
class Config:
    generation: int = MISSING
    seed: int = MISSING
    num_synthetic: int = MISSING
    cache_dir: str = MISSING
    threads: int | None = MISSING
    resume: str = MISSING
    dataset: Any = MISSING  # a DatasetConfig: the chosen dataset's own schema
    model: Any = MISSING  # the chosen model's Config
    regime: Any = MISSING  # a RegimeConfig
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    accelerator: AcceleratorConfig = field(default_factory=AcceleratorConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    families: dict[str, Any] = field(default_factory=dict)  # {name: model config}: families besides `model`


SCHEMAS = {
    "dataset": {"digits": DigitsConfig, "mnist": TorchvisionConfig, "fashion_mnist": TorchvisionConfig,
                "cifar10": CIFAR10Config, "folder": FolderConfig},
    "model": {"ddpm": DDPMConfig, "vae": VAEConfig, "gmm": GMMConfig},
    "regime": {"replace": ReplaceConfig, "accumulate": AccumulateConfig, "fresh": FreshConfig,
               "augment": AugmentConfig, "real_plus": RealPlusConfig, "contaminated": ContaminatedConfig},
}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent; the entry points call it before composing)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    if not OmegaConf.has_resolver("not_identity"):
        OmegaConf.register_new_resolver("not_identity", not_identity)
    if not OmegaConf.has_resolver("config_groups_help"):
        OmegaConf.register_new_resolver("config_groups_help", config_groups_help)
    if not OmegaConf.has_resolver("exit_codes_help"):
        OmegaConf.register_new_resolver("exit_codes_help", exit_codes_text)


def user_groups() -> list[str]:
    """The config groups a user chooses from (the kit's and those on `hydra.searchpath`)."""
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return sorted(p.name for p in CONF_DIR.iterdir()
                      if p.is_dir() and p.name not in HIDDEN_GROUPS and not p.name.startswith("_"))
    loader = GlobalHydra.instance().config_loader()
    return sorted(g for g in loader.list_groups("") if g not in HIDDEN_GROUPS)


def config_groups_help() -> str:
    """`--help`'s list of groups and their options (a resolver: the template of conf/hydra/help/imgcollapse.yaml)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return "\n".join(f"  {g:12s} {', '.join(loader.get_group_options(g))}" for g in user_groups())


def run_name(override_dirname: str) -> str:
    """A directory name from the command-line overrides: the same command maps to the same run dir."""
    name = re.sub(r"[^A-Za-z0-9=,._+-]+", "_", override_dirname).strip("_")
    return name[:200] or "default"


def not_identity(task_overrides: Any) -> list[str]:
    """The keys among the command's overrides that are not part of a run's identity (`resume.IGNORED`, prefixes
    included): `hydra.job.config.override_dirname.exclude_keys`, so a run dir's name and resume agree."""
    parsed = OverridesParser.create().parse_overrides([str(o) for o in task_overrides or ()])
    return sorted({o.key_or_group for o in parsed if is_ignored(o.key_or_group)})


def compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """The config `python -m imgcollapse.run OVERRIDES` would run with (for notebooks and tests); `hydra.*`
    overrides such as `hydra.searchpath=[file:///abs/my_conf]` work as on the command line."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides),
                             return_hydra_config=return_hydra_config)


def build(config: Any, **runtime: Any) -> Any:
    """The component a typed config names by `_target_`, given that config and the run-time objects it needs."""
    return get_object(config._target_)(config, **runtime)


def target(key: str, config: Any) -> Any:
    """The class or function `<key>._target_` names; a ConfigError naming the key if it cannot be imported."""
    try:
        return get_object(config._target_)
    except Exception as e:  # Hydra wraps ImportError and AttributeError in its own
        raise ConfigError(f"{key}._target_", config._target_, f"an importable class or function ({e})") from e


# Validation -------------------------------------------------------------------------------------
def validate(cfg: DictConfig) -> Config:
    """Each component's own checks, then the checks that span components; return the typed config.
    Raises ConfigError naming the key."""
    if "hydra" in cfg:  # composed with its hydra node (imgcollapse.compose): Hydra's own, not the run's
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    _reject_appended_keys(cfg)
    config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    for key in ("dataset", "model", "regime"):  # a user's own component, named by `_target_` alone
        setattr(config, key, typed_component(key, getattr(config, key)))
    require(config.generation >= 0, "generation", config.generation, "an integer ≥ 0 (the last generation)")
    require(0 <= config.seed < 2**32, "seed", config.seed, "an integer in [0, 2**32)")
    require(config.num_synthetic > 0, "num_synthetic", config.num_synthetic, "an integer > 0")
    require(config.threads is None or config.threads > 0, "threads", config.threads, "null (all cores) or > 0")
    require(config.resume in RESUME_MODES, "resume", config.resume,
            f"one of {list(RESUME_MODES)} (force: resume a run dir with a config other than its own)")
    require(bool(config.cache_dir), "cache_dir", config.cache_dir, "a folder (metrics classifier, references)")
    # Each component's own keys, in the order a reader meets them (a bad sampling.* value is named as such).
    d, m, r, s = config.dataset, config.model, config.regime, config.sampling
    for key in ("dataset", "model", "regime"):
        _require_schema(key, getattr(config, key))
    config.report.check()
    config.accelerator.check()
    d.check()
    s.check()
    m.check()
    r.check()
    config.metrics.check()
    config.logger.check()

    # Across components. `model` in chain.models / chain.population names `model`'s own family (a study's arm can
    # say "this model, then another" whatever model= the command line chose).
    for key in ("models", "population"):
        names = getattr(config.chain, key)
        if names is not None:
            setattr(config.chain, key, [model_kind(m) if n == "model" else n for n in names])
    families = family_configs(config)
    s.check_read(sampling_read(families), sampling_defaults())
    for family in families.values():  # each family's own fit with the data, the sampling and the training sets
        _check_sampling_for_model(family, s)
        if hasattr(family, "check_chain"):
            family.check_chain(image_size=d.image_size, channels=d.channels, sampling=s)
        _check_training_sets(config, family)
    config.metrics.check_sizes(config.num_synthetic)
    return config


class PluginConfig(dict):
    """The config of a user's component whose class has no `Config` dataclass: the YAML's keys as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def check(self) -> None:
        """Nothing to check here: the component checks its own keys when it is built."""


def typed_component(key: str, config: Any) -> Any:
    """A dataset, model or regime config as the component expects it. The kit's own come typed (their schema is
    registered); a user's own YAML (`_target_: mypkg.MyModel` plus its keys) is checked against the class's
    `Config` dataclass when it has one (unknown key or wrong type: ConfigError naming it), else passed as is."""
    if not isinstance(config, dict):
        return config
    require("_target_" in config, f"{key}._target_", None,
            f"the class that builds this {key} (a {key} YAML needs `_target_: package.module.Class`)")
    schema = getattr(target(key, PluginConfig(config)), "Config", None)
    if schema is None:
        return PluginConfig(config)
    names = [f.name for f in dataclasses.fields(schema)]
    for name in config:
        require(name in names, f"{key}.{name}", config[name],
                f"a key of {schema.__qualname__}{did_you_mean(name, names)}: one of {names}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), config))
    except OmegaConfBaseException as e:  # a wrong type or a value left unset, named by OmegaConf
        name = f"{key}.{e.key}" if getattr(e, "key", None) else key
        raise ConfigError(name, config.get(str(getattr(e, "key", "")), None),
                          f"{str(e.msg).splitlines()[0]} ({schema.__qualname__})") from e


def _reject_appended_keys(node: Any, prefix: str = "") -> None:
    """A key appended with `+` to a typed node (`+model.lrr=0.1`) would be dropped silently when the node becomes
    its dataclass: refuse it, naming the key and the closest field."""
    schema = OmegaConf.get_type(node)
    names = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    for key in node:
        full = f"{prefix}{key}"
        require(names is None or key in names, full, node._get_node(key)._value(),
                f"a key of {getattr(schema, '__qualname__', schema)}{did_you_mean(str(key), names or [])}: "
                f"one of {names}")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _reject_appended_keys(child, f"{full}.")


def did_you_mean(name: str, options: Any) -> str:
    """`" (did you mean 'x'?)"` for the option closest to `name` (difflib), or "" when none is close."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def model_kind(m: Any) -> str:
    """The conf/model/ name of a model config (ddpm, vae, gmm), from its schema."""
    return next((name for name, schema in SCHEMAS["model"].items() if type(m) is schema), type(m).__name__)


def family_configs(config: Config) -> dict[str, Any]:
    """{family name: model config} of every family the chain trains: `model` alone, or each name of chain.models
    (the one of `model`'s kind is `model`, the others come from `families.<name>`). ConfigError naming what is
    missing."""
    m = config.model
    key, names = "chain.models", config.chain.models
    if config.chain.population is not None:
        require(names is None, "chain.population", config.chain.population,
                "null while chain.models is set: families take turns or live side by side, not both")
        key, names = "chain.population", config.chain.population
    if names is None:
        return {model_kind(m): m}
    require(len(names) > 0, key, names, "null or a non-empty list of model families, e.g. [ddpm,vae]")
    found = {model_kind(m): m}
    for name, family in dict(config.families or {}).items():
        _require_schema(f"families.{name}", family)
        family.check()
        found.setdefault(name, family)
    families = {}
    for name in names:
        require(name in found, key, names,
                f"families this config has: {sorted(found)} (`model` is {model_kind(m)}); add another with "
                f"`+model@families.{name}={name}` on the command line or `- /model@families.{name}: {name}` in a "
                "preset's defaults")
        families[name] = found[name]
    if key == "chain.population":  # members' scores are columns `fid_<name>`: a name must not make a metric's
        for name in families:
            taken = [f"{c}_{name}" for c in metric_facts.MEMBER_COLUMNS if f"{c}_{name}" in metric_facts.FACTS]
            require(not taken and f"_{name}" not in metric_facts.SPACES and name not in ("lo", "hi", "sd"), key, names,
                    f"member names whose columns (fid_<name>, ...) are not the metrics' own ({name!r} would make "
                    f"{', '.join(taken) or f'fid_{name}'}, a metric's column): rename it, e.g. "
                    f"+model@families.{name}_model=...")
    if len(families) > 1 or key == "chain.population":
        for name, family in families.items():
            require(getattr(family, "init", "scratch") == "scratch", f"model.init ({name})",
                    getattr(family, "init", None), "scratch when families alternate: a model cannot start from "
                    "another family's weights")
        classes = {name: getattr(family, "num_classes", None) for name, family in families.items()}
        require(len(set(classes.values())) == 1, key, names,
                f"families that agree on class conditioning (num_classes: {classes})")
    return families


def _require_schema(key: str, config: Any) -> None:
    """A dataset, model or regime config must be a typed config (a dataclass with `check`) whose `_target_` imports:
    what a YAML file gets from `defaults: [/schema/<group>/<name>@_here_]`."""
    require(hasattr(config, "check") and hasattr(config, "_target_"), key, config,
            f"a typed config: its `_target_` class's `Config` dataclass, or a YAML with `_target_` and the class's "
            f"keys (docs/EXTENDING.md); the kit's own use `defaults: [/schema/{key}/<name>@_here_]`")
    target(key, config)


def sampling_defaults() -> dict[str, Any]:
    """The one default of each `sampling.*` key: conf/config.yaml's."""
    return dict(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml")["sampling"]))


def _sampling_keys(m: Any) -> tuple[str, ...]:
    """The sampling keys a model config's class reads (`SAMPLING_KEYS`); a user's model that does not say: all."""
    keys = getattr(target("model", m), "SAMPLING_KEYS", None)
    return tuple(f.name for f in dataclasses.fields(SamplingConfig)) if keys is None else tuple(keys)


def sampling_read(families: dict[str, Any]) -> dict[str, list[str]]:
    """{sampling key: the families that read it} (their `SAMPLING_KEYS`; the chain reads `conditions` for a
    class-conditional model); a family that does not say what it reads (a user's own model) reads every key."""
    read: dict[str, list[str]] = {}
    for name, family in families.items():
        keys = _sampling_keys(family)
        keys = (*keys, "conditions") if getattr(family, "num_classes", None) else keys
        for key in keys:
            read.setdefault(key, []).append(name)
    return read


def _check_sampling_for_model(m: Any, s: SamplingConfig) -> None:
    """Sampling bias each family must understand: guidance needs a class-conditional model that reads it, and a
    temperature a model that has one (in a chain of families, every family)."""
    keys = _sampling_keys(m)
    require(s.guidance == 0 or ("guidance" in keys and bool(getattr(m, "num_classes", None))), "sampling.guidance",
            s.guidance, "0 unless the model is class-conditional (model=ddpm with model.num_classes set)")
    require(s.temperature == 1 or "temperature" in keys, "sampling.temperature", s.temperature,
            f"1.0 for {model_kind(m)}, which has no temperature (diffusion's sampling bias is sampling.guidance)")


def _check_training_sets(config: Config, m: Any) -> None:
    """Each generation after 0 trains (a model of config `m`) on the regime's training set: it must hold a batch,
    and a GMM's components and PCA dimensions."""
    r = config.regime
    if config.generation == 0:  # generation 0 trains on the real pool (checked in validate_data)
        return
    sized = r.training_size(config.num_synthetic)
    if sized is None:  # it grows: never smaller than generation 0's
        return
    key, size = sized
    if hasattr(m, "check_training_size"):
        m.check_training_size(key, size, f"each generation after 0 trains on {key}={size} images under "
                                         f"regime={_regime_name(r)}")


def _regime_name(r: RegimeConfig) -> str:
    return getattr(target("regime", r), "kind", r._target_)


def validate_data(config: Config, num_train: int, num_classes: int | None) -> None:
    """Checks that need the loaded data (the training pool's size, its class count or None if unlabelled); run
    before the metrics classifier or any model trains. Raises ConfigError."""
    m, r = config.model, config.regime
    wanted = getattr(m, "num_classes", None)
    require(not wanted or num_classes is not None, "model.num_classes", wanted,
            "null: this dataset has no class labels (a folder gets them from class subfolders), so a model "
            "cannot be conditioned on them")
    require(not wanted or wanted == num_classes, "model.num_classes", wanted,
            f"null (unconditional) or the dataset's class count, {num_classes}")
    for family in family_configs(config).values():  # generation 0 fits the real pool (each family's own check)
        if hasattr(family, "check_data"):
            family.check_data(num_train)
    extractors = config.metrics.extractors
    has_classifier = num_classes is not None and (extractors == "auto" or "classifier" in extractors)
    if hasattr(r, "check_data"):  # a user's regime without a `Config` has nothing to check here
        r.check_data(num_train=num_train, num_classes=num_classes, num_synthetic=config.num_synthetic, model=m,
                     has_classifier=has_classifier)


__all__ = ["Config", "DatasetConfig", "build", "compose", "register", "validate", "validate_data"]
