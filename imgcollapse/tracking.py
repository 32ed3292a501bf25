"""Experiment trackers through accelerate (`logger=tensorboard`): metric scalars and the sample grid per generation.

Event files are appended by TensorBoard's own writer under `<run dir>/tensorboard/` (the one thing in a
run directory not written by rename: an event stream cannot be). A resumed chain appends to the same
directory, so its curves continue where they stopped.
"""

from __future__ import annotations

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

KINDS = ("none", "tensorboard")  # accelerate trackers that work offline
PROJECT = "tensorboard"  # events go to <run dir>/<PROJECT>/


@dataclass
class LoggerConfig:
    """`logger=...`: which tracker, and whether it gets the grids (conf/logger/)."""

    kind: str = MISSING
    images: bool = MISSING

    def check(self) -> None:
        """A known tracker whose package is installed."""
        require(self.kind in KINDS, "logger.kind", self.kind, f"one of {list(KINDS)} (choose with logger=NAME)")
        require(tracker_available(self.kind), "logger.kind", self.kind,
                f"a tracker whose package is installed: pip install 'imgcollapse[{self.kind}]'")


def tracker_available(kind: str) -> bool:
    """Whether the package behind tracker `kind` is installed."""
    return kind == "none" or importlib.util.find_spec(kind) is not None


def accelerator_kwargs(kind: str, run_dir: Path) -> dict[str, Any]:
    """Arguments for `Accelerator(...)` that attach tracker `kind` ('none': nothing)."""
    return {} if kind == "none" else {"log_with": kind, "project_dir": str(run_dir)}


def flatten(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """A nested config as `{"a.b": primitive}`: what TensorBoard's hparams accept (lists and None as text)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flatten_keys(config).items()}


class Tracker:
    """Logs each finished generation to the accelerator's trackers; does nothing for `logger=none`."""

    def __init__(self, accelerator: Accelerator, kind: str, images: bool) -> None:
        self.accelerator, self.kind, self.images = accelerator, kind, images

    def start(self, config: Mapping[str, Any]) -> None:
        if self.kind != "none":
            self.accelerator.init_trackers(PROJECT, config=flatten(config))

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
            tracker = self.accelerator.get_tracker(self.kind)
            tracker.log_images({"grid": pixels[None]}, step=generation, dataformats="NHWC")
            tracker.tracker.flush()

    def finish(self) -> None:
        if self.kind != "none":
            self.accelerator.end_training()
