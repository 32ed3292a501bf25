"""Entry point: `python -m imgcollapse.run [overrides]` trains a chain of generations (see conf/).

`main` maps the kit's errors to exit codes; `run` validates the config and holds the run dir's lock; `_wire`
builds every component and the run's record, then hands them to the one loop, `chain.run`. Under
`accelerate launch` every process runs all of this; the steps only the main process takes are marked inline.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.metadata
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import imgcollapse
from imgcollapse import chain, faults, resume
from imgcollapse.config import Config, build, register, validate, validate_data
from imgcollapse.data import Splits
from imgcollapse.errors import UserError, WriteFailed
from imgcollapse.launch import hydra_launcher, resolve_threads
from imgcollapse.lock import RunLock
from imgcollapse.metrics import Metrics, evaluate, setup_metrics
from imgcollapse.models.train import TrainingDiverged, enable_tf32, mixed_precision
from imgcollapse.report.run_report import build_run_report
from imgcollapse.store import RunStore
from imgcollapse.tracking import Tracker, accelerator_kwargs

log = logging.getLogger("imgcollapse")
register()


VERSIONED = ("imgcollapse", "torch", "diffusers", "accelerate", "numpy", "scikit-learn", "clean-fid", "prdc")


def versions() -> dict[str, str]:
    """The installed versions of the libraries a generation's numbers depend on, and Python's."""
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
            found[name] = imgcollapse.__version__ if name == "imgcollapse" else "unknown"
    return {**found, "python": platform.python_version()}


def data_fingerprint(splits: Splits) -> dict[str, str]:
    """Content hashes of the training pool and held-out split: what run.json compares on resume."""
    return {"train": splits.train.fingerprint(), "heldout": splits.heldout.fingerprint()}


class Reporter:
    """After each generation: log it to the tracker, and redraw the run's report from disk when `redraw_seconds`
    have passed since the last redraw (and once more when the chain ends). Never stops the chain."""

    def __init__(self, run_dir: Path, tracker: Tracker, redraw_seconds: float, draw: bool = True) -> None:
        self.run_dir, self.tracker, self.redraw_seconds, self.draw = run_dir, tracker, redraw_seconds, draw
        self.drawn_at = time.perf_counter()  # the chain's start counts as a redraw: the first comes once a chain
        # has run `redraw_seconds`, so a chain of seconds is drawn once, at its end
        self.stale = False  # a generation finished since the last redraw

    def __call__(self, generation: int, row: dict) -> None:
        self.stale = True
        self._try(self.tracker.log_generation, generation, row, self.run_dir / f"gen_{generation:03d}" / "grid.png")
        if time.perf_counter() - self.drawn_at >= self.redraw_seconds:
            self.redraw()

    def redraw(self) -> None:
        if not self.draw:
            return
        began = time.perf_counter()
        if self._try(build_run_report, self.run_dir):
            log.debug("report redrawn in %.2f s", time.perf_counter() - began)
        self.drawn_at, self.stale = time.perf_counter(), False

    def finish(self) -> None:
        """The last redraw, unless nothing changed since the one before and the report is there."""
        if self.stale or not (self.run_dir / "report.html").exists():
            self.redraw()

    def _try(self, fn: Any, *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except Exception as e:  # figures and tracker logs are derived from files on disk and can be redone later
            log.warning("report failed (%s: %s); rebuild it with: python -m imgcollapse.report %s",
                        type(e).__name__, e, self.run_dir)
            return False


def run(cfg: DictConfig, run_dir: Path) -> list[dict]:
    """Validate the config, hold the run directory's lock (main process) and run the chain in it."""
    faults.arm(os.environ.get(faults.ENV))  # the resume tests' kill points (imgcollapse/faults.py)
    config = validate(cfg)
    # this process's place under `accelerate launch` / torchrun (or the only process); without a GPU the
    # processes train on the CPU over gloo, which accelerate does only when told the run is CPU-only
    processes = PartialState(cpu=not torch.cuda.is_available())
    if processes.num_processes > 1:
        # the run dir is decided once, by the main process, whatever the others' Hydra made of the overrides
        run_dir = broadcast_object_list([str(run_dir)])[0]
    if not processes.is_main_process:  # the main process holds the lock and speaks for the run
        logging.getLogger("imgcollapse").setLevel(logging.WARNING)
    with RunLock(Path(run_dir)) if processes.is_main_process else contextlib.nullcontext():  # one writer per run dir
        return _wire(cfg, config, Path(run_dir))


def _wire(cfg: DictConfig, config: Config, run_dir: Path) -> list[dict]:
    """Build every component from the config and run the chain with them."""
    # Initialize.
    threads = resolve_threads(config.threads, hydra_launcher())
    torch.set_num_threads(threads)
    enable_tf32()
    accelerator = Accelerator(mixed_precision=mixed_precision(config.accelerator.mixed_precision),
                              cpu=not torch.cuda.is_available(), **accelerator_kwargs(config.logger.kind, run_dir))
    main = accelerator.is_main_process
    store = RunStore(run_dir)
    environment = {"versions": versions(), "threads": threads, "mixed_precision": accelerator.mixed_precision,
                   "device": accelerator.device.type, "num_processes": accelerator.num_processes}
    log.info("run dir %s (torch threads %d, %s, mixed precision %s%s)", run_dir, threads, accelerator.device,
             accelerator.mixed_precision,
             f", {accelerator.num_processes} processes" if accelerator.num_processes > 1 else "")

    # Resume (main): what a killed writer left is removed, and a rerun is checked against the run's record.
    resolved = OmegaConf.to_container(cfg, resolve=True)
    started, changes = None, []
    if main:
        for tmp in store.remove_temporaries():
            log.info("removed %s, left by an interrupted write", tmp)
        started = resume.read_started(store)
        start = resume.prepare(store)
        if started is not None:
            changes.append(resume.check_config(run_dir, started.get("config", {}), resolved, mode=config.resume,
                                               next_generation=start))
            if start <= config.generation:  # only generations still to train can be made differently
                changes.append(resume.check_environment(store, environment, mode=config.resume,
                                                        next_generation=start))

    # Data, split once.
    splits: Splits = build(config.dataset)
    log.info("dataset: %d training images, %d held out, shape %s", len(splits.train), len(splits.heldout),
             splits.train.shape)

    # Metrics (main): feature extractors with held-out reference statistics, all cached; the run's record.
    metrics: Metrics | None = None
    if main:
        validate_data(config, len(splits.train), splits.train.num_classes if splits.train.labels is not None else None)
        fingerprint = data_fingerprint(splits)
        if started is not None:
            changes.append(resume.check_data(run_dir, started.get("dataset", {}).get("fingerprint"), fingerprint,
                                             mode=config.resume, next_generation=start))
        metrics = setup_metrics(splits, Path(config.cache_dir).expanduser(), config.metrics, seed=config.seed,
                                device=accelerator.device)
        if metrics.classifier is not None:
            log.info("metrics classifier accuracy %.3f; FID of real training pool vs held-out %.1f",
                     metrics.classifier.accuracy, metrics.baseline.get("fid"))
        store.write_json(run_dir / "run.json", _record(started, resolved, splits, fingerprint, metrics,
                                                       [c for c in changes if c], environment))

    # Model and regime, chosen by config.
    make_model = functools.partial(build, config.model, image_shape=splits.train.shape, sampling=config.sampling,
                                   accelerator=accelerator)
    regime = build(config.regime)
    tracker = Tracker(accelerator, config.logger.kind, images=config.logger.images)
    tracker.start(resolved)
    reporter = Reporter(run_dir, tracker, config.report.redraw_seconds, draw=config.report.draw)
    accelerator.wait_for_everyone()  # other processes (accelerate launch) wait for the checks and metrics set-up

    try:
        return chain.run(
            store=store, splits=splits, make_model=make_model, regime=regime,
            score=functools.partial(evaluate, metrics=metrics) if main else None,
            generation=config.generation, seed=config.seed, num_synthetic=config.num_synthetic,
            conditions=config.sampling.conditions,
            grid_size=config.report.grid_size, strip_seeds=config.report.strip_seeds, environment=environment,
            after_generation=reporter,
            processes=accelerator if accelerator.num_processes > 1 else None,
        )
    finally:
        # Done, or stopped: the report once more, from whatever is on disk (main), and the tracker closed;
        # neither may hide how the chain ended.
        if main:
            reporter.finish()
            log.info("report: %s", run_dir / "report.html" if config.report.draw else
                     f"not drawn (report.draw=false): python -m imgcollapse.report {run_dir}")
        try:
            tracker.finish()
        except Exception as e:
            log.warning("closing the %s tracker failed (%s: %s)", config.logger.kind, type(e).__name__, e)


def _record(started: dict | None, resolved: dict, splits: Splits, fingerprint: dict, metrics: Metrics,
            changes: list[dict], environment: dict[str, Any]) -> dict[str, Any]:
    """run.json: the config and data a run was started with (kept on resume), what changed since, and what this
    invocation's metrics could compute."""
    record = started or {
        "config": resolved,
        "dataset": {
            "num_train": len(splits.train),
            "num_heldout": len(splits.heldout),
            "image_shape": list(splits.train.shape),
            "class_names": splits.train.class_names,
            **splits.info,  # source, class counts, long tail, skipped files
            "fingerprint": fingerprint,  # a resume on other data is refused
        },
        "classifier_accuracy": metrics.classifier.accuracy if metrics.classifier is not None else None,
        "fid_real": metrics.baseline.get("fid"),  # FID of the real training pool against the held-out split
        "versions": environment["versions"],
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    record["dataset"].setdefault("fingerprint", fingerprint)
    forced = [c for c in changes if c.get("changed")]
    if forced:  # resume=force: the run goes on with this config and data
        log.warning("resume=force: generations %d.. use a changed config: %s", forced[0]["from_generation"],
                    ", ".join(k for c in forced for k in c["changed"]))
        record["config"] = resolved
        record["dataset"]["fingerprint"] = fingerprint
    if changes:
        record["config_changes"] = record.get("config_changes", []) + changes
    record["environment"] = environment  # this invocation's; each generation keeps its own in environment.json
    record["metrics"] = metrics.metadata()  # refreshed on resume: what this invocation could compute
    return record


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as e:
        log.error("%s", e)
        sys.exit(2)
    except TrainingDiverged as e:
        log.error("training diverged: %s", e)
        sys.exit(3)
    except WriteFailed as e:  # disk full, quota, I/O error: the generation being written is not marked done
        log.error("%s. Finished generations are kept; free space (or fix the error) and rerun the same command "
                  "to resume", e)
        sys.exit(4)


if __name__ == "__main__":
    main()
