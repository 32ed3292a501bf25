"""Experiment trackers through accelerate (`logger=tensorboard`, `logger=wandb`): metric scalars and the sample
grid per generation.

TensorBoard's event files are appended by its own writer under `<run dir>/tensorboard/` (the one thing in a
run directory not written by rename: an event stream cannot be). A resumed chain appends to the same
directory, so its curves continue where they stopped. W&B keeps its files under `<run dir>/wandb/` and works
offline (`WANDB_MODE=offline`, then `wandb sync`); its run id is derived from the run dir, so a resumed chain
continues the same W&B run, and the jobs of one `-m` sweep share a W&B group (the sweep dir's name).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from omegaconf import MISSING
from PIL import Image

from imgcollapse.errors import require
from imgcollapse.resume import flatten as flatten_keys

KINDS = ("none", "tensorboard", "wandb")  # accelerate trackers that work offline
PROJECT = "tensorboard"  # tensorboard: events go to <run dir>/<PROJECT>/


@dataclass
class LoggerConfig:
    """`logger=...`: which tracker, and whether it gets the grids (conf/logger/)."""

    kind: str = MISSING
    images: bool = MISSING
    project: str | None = MISSING  # the W&B project (wandb only)

    def check(self) -> None:
        """A known tracker whose package is installed."""
        require(self.kind in KINDS, "logger.kind", self.kind, f"one of {list(KINDS)} (choose with logger=NAME)")
        require(tracker_available(self.kind), "logger.kind", self.kind,
                f"a tracker whose package is installed: pip install 'imgcollapse[{self.kind}]' (or pip install "
                f"{self.kind}), or logger=none")


def tracker_available(kind: str) -> bool:
    """Whether the package behind tracker `kind` is installed."""
    try:
        return kind == "none" or importlib.util.find_spec(kind) is not None
    except (ImportError, ValueError):  # a broken install counts as none
        return False


def wandb_run_id(run_dir: Path) -> str:
    """A W&B run id from the run dir's absolute path: rerunning (resuming) the chain continues the same W&B run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def init_kwargs(kind: str, run_dir: Path, group: str | None) -> dict[str, Any]:
    """`init_trackers` keyword arguments of tracker `kind`: for W&B its files in the run dir, the run id derived
    from the run dir (resumed, not duplicated), the run dir's name, and the sweep's group."""
    if kind != "wandb":
        return {}
    run_dir = Path(run_dir)
    return {"wandb": {"id": wandb_run_id(run_dir), "resume": "allow", "dir": str(run_dir), "name": run_dir.name,
                      "group": group}}


def sweep_group() -> str | None:
    """The sweep dir's name inside a job of a `-m` sweep (its W&B group), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(str(HydraConfig.get().sweep.dir)).name


def accelerator_kwargs(kind: str, run_dir: Path) -> dict[str, Any]:
    """Arguments for `Accelerator(...)` that attach tracker `kind` ('none': nothing)."""
    return {} if kind == "none" else {"log_with": kind, "project_dir": str(run_dir)}


def flatten(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """A nested config as `{"a.b": primitive}`: what TensorBoard's hparams accept (lists and None as text)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flatten_keys(config).items()}


class Tracker:
    """Logs each finished generation to the accelerator's trackers; does nothing for `logger=none`."""

    def __init__(self, accelerator: Accelerator, kind: str, images: bool, run_dir: Path | None = None,
                 project: str | None = None, group: str | None = None) -> None:
        self.accelerator, self.kind, self.images = accelerator, kind, images
        self.run_dir, self.project, self.group = run_dir, project, group

    def start(self, config: Mapping[str, Any]) -> None:
        if self.kind == "none":
            return
        project = PROJECT if self.kind == "tensorboard" else (self.project or "imgcollapse")
        kwargs = init_kwargs(self.kind, self.run_dir, self.group) if self.run_dir is not None else {}
        self.accelerator.init_trackers(project, config=flatten(config), init_kwargs=kwargs)

    def log_generation(self, generation: int, row: Mapping[str, Any], grid: Path) -> None:
        """Scalars of the metrics row (numbers only) and the grid image, at step = generation."""
        if self.kind == "none":
            return
        scalars = {k: float(v) for k, v in row.items() if k != "generation" and isinstance(v, (int, float))
                   and not isinstance(v, bool) and math.isfinite(v)}
        self.accelerator.log(scalars, step=generation)
        if self.images and self.accelerator.is_main_process and Path(grid).exists():
            with Image.open(grid) as im:
                pixels = np.asarray(im.convert("RGB"))
            tracker = self.accelerator.get_tracker(self.kind, unwrap=False)
            if self.kind == "tensorboard":
                tracker.log_images({"grid": pixels[None]}, step=generation, dataformats="NHWC")
                tracker.tracker.flush()
            else:  # accelerate's log_images of the other trackers take a list of HWC images
                tracker.log_images({"grid": [pixels]}, step=generation)

    def finish(self) -> None:
        if self.kind != "none":
            self.accelerator.end_training()
