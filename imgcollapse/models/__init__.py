"""Generative models. Each is a small class the chain drives through four methods and one attribute:

    fit(data: ImageSet, seed: int) -> dict[str, float]       train from scratch on `data` (has "train_loss")
    sample(n: int, seed: int, labels=None) -> ImageSet        deterministic for a given seed
    save(path: Path) -> None                                  a self-contained directory
    load(path: Path, accelerator=None) -> Model  (classmethod)
    num_classes: int | None                                   set: conditional, `sample` needs `labels`

Each model owns a typed config (`Model.Config`, a dataclass that is also its Hydra schema, with its own
`check()`), and is built as `Model(config, image_shape=..., sampling=..., accelerator=...)` by
`imgcollapse.config.build`. How every model samples lives in one node, `sampling` (SamplingConfig below);
`Model.SAMPLING_KEYS` names the keys of it a model reads. Models: `ddpm` (diffusers), `vae` (a small conv
VAE), `gmm` (scikit-learn's GaussianMixture). All take 1- or 3-channel images; vae and gmm any height and
width, ddpm sizes its UNet's downsampling divides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import MISSING

from imgcollapse.data import ImageSet
from imgcollapse.errors import require

SAMPLERS = ("ddim", "dpm++")  # diffusion samplers (models/ddpm.py maps each to its diffusers scheduler)
CONDITIONS = ("real", "uniform", "train")  # class frequencies a conditional model's samples are asked for


@dataclass
class SamplingConfig:
    """How every model samples (`sampling.*`): one node, read by the models (SAMPLING_KEYS) and the chain."""

    sampler: str = MISSING
    steps: int = MISSING
    guidance: float = MISSING
    temperature: float = MISSING
    batch_size: int = MISSING
    conditions: str = MISSING

    def check(self) -> None:
        """Ranges and enums of the sampling keys (ConfigError naming the key)."""
        require(self.sampler in SAMPLERS, "sampling.sampler", self.sampler, f"one of {sorted(SAMPLERS)}")
        require(self.steps > 0, "sampling.steps", self.steps, "an integer > 0")
        require(self.batch_size > 0, "sampling.batch_size", self.batch_size, "an integer > 0")
        require(self.guidance >= 0, "sampling.guidance", self.guidance, "≥ 0 (0: plain conditional sampling)")
        require(self.temperature > 0, "sampling.temperature", self.temperature, "> 0")
        require(self.conditions in CONDITIONS, "sampling.conditions", self.conditions, f"one of {list(CONDITIONS)}")

    def check_read(self, read: dict[str, list[str]], defaults: Mapping[str, Any]) -> None:
        """A key that no model of the chain reads (`read`: key -> the families that read it) must keep its one
        default (conf/config.yaml): set, it would be ignored without a word."""
        for key, default in defaults.items():
            value = getattr(self, key)
            require(key in read or value == default, f"sampling.{key}", value,
                    f"{default!r} (its default): no model this chain trains reads it; the keys read here are "
                    + (", ".join(f"{k} ({'/'.join(v)})" for k, v in sorted(read.items())) or "none"))


class Model(Protocol):
    num_classes: int | None  # class-conditional models sample from labels; None: unconditional

    def fit(self, data: ImageSet, seed: int) -> dict[str, float]: ...

    def sample(self, n: int, seed: int, labels: torch.Tensor | None = None) -> ImageSet: ...

    def save(self, path: Path) -> None: ...


def noise(shape: tuple[int, ...], seed: int, start: int, stop: int, chunk: int = 256) -> torch.Tensor:
    """Standard normal noise for items [start, stop) of an endless seeded stream.

    Item i's noise depends only on (seed, i), never on the batch size, so the same seed gives the
    same starting point for every sample count: the collapse strip relies on it.
    """
    parts = []
    for c in range(start // chunk, (stop - 1) // chunk + 1):
        g = torch.Generator().manual_seed(seed * 1_000_003 + c)
        block = torch.randn((chunk, *shape), generator=g)
        lo, hi = max(start, c * chunk) - c * chunk, min(stop, (c + 1) * chunk) - c * chunk
        parts.append(block[lo:hi])
    return torch.cat(parts)


CONFIG_FILE = "imgcollapse.json"  # beside each saved model: what `Model.load` rebuilds it from
_OLD_SAMPLING_KEYS = {"sampler": "sampler", "sampling_steps": "steps", "guidance": "guidance",
                      "temperature": "temperature", "sample_batch_size": "batch_size"}  # before the sampling node
# what a kit-0.1 checkpoint sampled with where its flat layout has no key: a fact of that version, not a default
KIT_01_SAMPLING = {"sampler": "dpm++", "steps": 10, "guidance": 0.0, "temperature": 1.0, "batch_size": 128,
                   "conditions": "real"}


def write_model_config(path: Path, config: Any, image_shape: tuple[int, ...], sampling: SamplingConfig) -> None:
    """The model's typed config, image shape and sampling settings as `path/imgcollapse.json`."""
    record = {"model": asdict(config), "image_shape": [int(v) for v in image_shape], "sampling": asdict(sampling)}
    (Path(path) / CONFIG_FILE).write_text(json.dumps(record, indent=1))


def read_model_config(path: Path, config_class: type) -> tuple[Any, tuple[int, int, int], SamplingConfig]:
    """What `write_model_config` wrote (or a checkpoint of kit version 0.1's flat layout, whose sampling keys
    lived among the model's): (config, image shape, sampling)."""
    record = json.loads((Path(path) / CONFIG_FILE).read_text())
    if "model" not in record:  # the 0.1 layout: one flat dict
        flat = dict(record)
        sampling = {new: flat.pop(old) for old, new in _OLD_SAMPLING_KEYS.items() if old in flat}
        record = {"image_shape": flat.pop("image_shape"), "model": flat, "sampling": {**KIT_01_SAMPLING, **sampling}}
    names = {f.name for f in fields(config_class)}
    config = config_class(**{k: v for k, v in record["model"].items() if k in names})
    return config, tuple(record["image_shape"]), SamplingConfig(**record["sampling"])  # type: ignore[return-value]
