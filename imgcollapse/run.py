"""Entry point: `imgcollapse [overrides]` (= `python -m imgcollapse.run`) trains a chain of generations (see conf/).

`main` maps the kit's errors to exit codes; `run` validates the config and holds the run dir's lock; `_wire`
builds every component and the run's record, then hands them to the one loop, `chain.run`. Under
`accelerate launch` every process runs all of this; the steps only the main process takes are marked inline.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list
from omegaconf import DictConfig, OmegaConf

from imgcollapse import chain, cli, faults, progress, resume
from imgcollapse._version import __version__
from imgcollapse.config import Config, build, family_configs, register, validate, validate_data
from imgcollapse.data import Splits
from imgcollapse.errors import UserError
from imgcollapse.lock import RunLock
from imgcollapse.metrics import Metrics, evaluate, setup_metrics
from imgcollapse.metrics.calibration import FILE as CALIBRATION_FILE
from imgcollapse.metrics.calibration import load_or_calibrate
from imgcollapse.metrics.calibration import write_json as write_calibration
from imgcollapse.models.population import Population
from imgcollapse.models.train import enable_tf32, mixed_precision
from imgcollapse.report import header
from imgcollapse.report.run_report import build_run_report
from imgcollapse.store import RunStore
from imgcollapse.threads import hydra_launcher, resolve_threads
from imgcollapse.tracking import Tracker, accelerator_kwargs, sweep_group

log = logging.getLogger("imgcollapse")
register()


VERSIONED = ("imgcollapse", "torch", "torchvision", "diffusers", "accelerate", "safetensors", "numpy", "scipy",
             "scikit-learn", "clean-fid", "prdc", "pillow")


def versions() -> dict[str, str]:
    """The installed versions of the libraries a generation's numbers depend on, and Python's."""
    found = {"imgcollapse": __version__}  # the code that runs (an editable install's metadata keeps its first version)
    for name in VERSIONED[1:]:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
            found[name] = "unknown"
    return {**found, "python": platform.python_version()}


class Reporter:
    """After each generation: log it to the tracker, and redraw the run's report from disk when `redraw_seconds`
    have passed since the last redraw (and once more when the chain ends; `draw=False`: never). Never stops the
    chain."""

    def __init__(self, run_dir: Path, tracker: Tracker, redraw_seconds: float, draw: bool = True) -> None:
        self.run_dir, self.tracker, self.redraw_seconds, self.draw = run_dir, tracker, redraw_seconds, draw
        self.drawn_at = time.perf_counter()  # the chain's start counts as a redraw: the first comes once a chain
        # has run `redraw_seconds`, so a chain of seconds is drawn once, at its end
        self.stale = False  # a generation finished since the last redraw

    def __call__(self, generation: int, row: dict) -> None:
        self.stale = True
        progress.generation_done(row.get("seconds") or 0.0)  # the chain's ETA in the training log
        try:
            self.tracker.log_generation(generation, row, self.run_dir / f"gen_{generation:03d}" / "grid.png")
        except Exception as e:  # a tracker's hiccup must not stop the chain: its files are on disk
            log.warning("logging generation %d to the %s tracker failed (%s: %s)", generation, self.tracker.kind,
                        type(e).__name__, e)
        if time.perf_counter() - self.drawn_at >= self.redraw_seconds:
            self.redraw()

    def redraw(self) -> None:
        if not self.draw:
            return
        began = time.perf_counter()
        try:
            build_run_report(self.run_dir)
            log.debug("report redrawn in %.2f s", time.perf_counter() - began)
            self.stale = False
        except Exception as e:  # figures are derived from files on disk: the end of the chain tries again
            log.warning("report failed (%s: %s); rebuild it with: python -m imgcollapse.report %s",
                        type(e).__name__, e, self.run_dir)
        self.drawn_at = time.perf_counter()

    def finish(self) -> None:
        """The last redraw, unless nothing changed since the one before and the report is there."""
        if self.stale or not (self.run_dir / "report.html").exists():
            self.redraw()


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
    # Data, split once: the main process first (it may download or decode into a cache the others then read).
    # Under accelerate launch a failure of the main process reaches the others at the next barrier (chain.MainOnly).
    resolved = OmegaConf.to_container(cfg, resolve=True)
    processes = accelerator if accelerator.num_processes > 1 else None
    on_main = chain.MainOnly(processes)
    opened = on_main(resume.open_run, store, resolved, environment, mode=config.resume, generation=config.generation)
    splits: Splits = on_main(build, config.dataset)
    on_main.barrier()
    if not main:
        splits = build(config.dataset)
    log.info("dataset: %d training images, %d held out, shape %s", len(splits.train), len(splits.heldout),
             splits.train.shape)

    # Metrics (main): the checks that need the data, feature extractors with held-out reference statistics (all
    # cached), the run's record.
    metrics: Metrics | None = on_main(_metrics_and_record, config, resolved, opened, splits, store, environment,
                                      accelerator.device)

    # Model and regime, chosen by config; curation runs on the main process (curation=verify trains or reads its
    # verifier there).
    make_model = functools.partial(build, config.model, image_shape=splits.train.shape, sampling=config.sampling,
                                   accelerator=accelerator)
    regime = build(config.regime, num_synthetic=config.num_synthetic)  # the regime's sample count
    if accelerator.num_processes > 1 and (kind := getattr(config.regime, "filter", None)) in ("detector", "watermark"):
        # its floor split is handed over on the main process only, and every process builds its own training set
        raise UserError(f"regime.filter={kind} runs in one process, not {accelerator.num_processes}: use "
                        "regime.filter=oracle|none, or a single process")
    family_for = _families(config, splits, accelerator)
    # the verifier learns from the floor split, which the metrics classifier never sees (a user's regime written
    # before the argument existed is not handed it)
    floor = {"floor": splits.floor} if "floor" in inspect.signature(regime.setup).parameters else {}
    on_main(regime.setup, splits.train, splits.heldout, Path(config.cache_dir).expanduser(),
            conditional=bool(getattr(config.model, "num_classes", None)), generation=config.generation, **floor)
    # A study's arm: generation 0 (or its model) is another chain's, once config, data and numeric settings match.
    adopted_fit = None
    if config.chain.share_gen0 and store.num_done() == 0:
        adopted_fit = on_main(resume.adopt_generation0, store, Path(config.chain.share_gen0), resolved, environment,
                              splits.fingerprint())
    if processes is not None:  # every process loads the adopted model, as every process would have fitted it
        adopted_fit = broadcast_object_list([adopted_fit])[0]
    tracker = Tracker(accelerator, config.logger.kind, images=config.logger.images, run_dir=run_dir,
                      project=config.logger.project, group=sweep_group())
    on_main.barrier()  # the other processes wait for the checks and the metrics set-up
    tracker.start(resolved)
    reporter = Reporter(run_dir, tracker, config.report.redraw_seconds, draw=config.report.draw)
    progress.begin_chain(store.num_done(), config.generation)

    try:
        return chain.run(
            store=store, splits=splits, make_model=make_model, regime=regime,
            score=functools.partial(evaluate, metrics=metrics) if main else None,
            predict=metrics.predict if metrics is not None else None,
            num_null=(config.metrics.num_null or len(splits.heldout)) if main else 0,
            generation=config.generation, seed=config.seed,
            conditions=config.sampling.conditions,
            grid_size=config.report.grid_size, strip_seeds=config.report.strip_seeds, environment=environment,
            after_generation=reporter,
            processes=processes,
            family_for=family_for,
            adopted_fit=adopted_fit,
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


def _families(config: Config, splits: Splits, accelerator: Accelerator) -> Any:
    """chain.models: generation g -> (family name, its make_model), the families in turn; chain.population: every
    generation ("population", a Population of the families); None for neither."""
    if config.chain.models is None and config.chain.population is None:
        return None
    makers = {name: functools.partial(build, family, image_shape=splits.train.shape, sampling=config.sampling,
                                      accelerator=accelerator) for name, family in family_configs(config).items()}
    if config.chain.population is not None:
        members = list(config.chain.population)
        return lambda g: ("population", lambda: Population([(name, makers[name]()) for name in members]))
    names = list(config.chain.models)
    return lambda g: (names[g % len(names)], makers[names[g % len(names)]])


def _metrics_and_record(config: Config, resolved: dict, opened: resume.Opened, splits: Splits, store: RunStore,
                        environment: dict[str, Any], device: torch.device) -> Metrics:
    """The main process's set-up once the data is loaded: checks on the data (and, resuming, that it is the run's),
    the metrics' feature spaces, and run.json."""
    validate_data(config, len(splits.train), splits.train.num_classes if splits.train.labels is not None else None)
    dataset = splits.describe()  # hashes every image once: its fingerprint serves the check and the record
    if opened.started is not None and opened.to_train(config.generation):
        opened.changes.append(resume.check_data(store.root, opened.started["dataset"].get("fingerprint"),
                                                dataset["fingerprint"], mode=config.resume,
                                                next_generation=opened.start))
    metrics = setup_metrics(splits, Path(config.cache_dir).expanduser(), config.metrics, seed=config.seed,
                            device=device, num_scored=config.metrics.num_samples or config.num_synthetic)
    if metrics.classifier is not None:
        log.info("metrics classifier accuracy %.3f; real floor (two unseen real sets of %d) FID %.1f, coverage %.3f",
                 metrics.classifier.accuracy, metrics.size, metrics.baseline.get("fid"),
                 metrics.baseline.get("coverage"))
    facts = {"classifier_accuracy": metrics.classifier.accuracy if metrics.classifier is not None else None,
             "fid_real": metrics.baseline.get("fid"),  # the real floor: two real sets the classifier never saw
             "metrics": metrics.metadata(),  # what this invocation could compute
             "invocation": header.invocation()}  # command, time, git commit, machine: the report's header
    if config.report.draw and not (store.root / header.REAL_GRID).exists():  # shown beside generation 0's grid
        header.write_real_grid(splits.train.images[: config.report.grid_size], store.root / header.REAL_GRID)
    store.write_json(store.root / "run.json", resume.record(opened, resolved, dataset, facts, environment))
    if config.metrics.calibrate and metrics.spaces:
        # which metric sees which change on this data (cached per dataset and feature space); the report shows it
        result = load_or_calibrate(splits, metrics, Path(config.cache_dir).expanduser())
        write_calibration(store.root / CALIBRATION_FILE, result)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> int:
    """One chain (one job of a `-m` sweep): `run` in Hydra's output dir, errors mapped to exit codes (cli.job)."""
    return cli.job(cfg, run)


def main() -> None:
    """`imgcollapse OVERRIDES` / `python -m imgcollapse.run OVERRIDES`: the chain, behind the kit's command line
    (one-line errors with exit status 2, Ctrl-C 130, sweeps that outlive a failed job)."""
    cli.main(hydra_main)


if __name__ == "__main__":
    main()
