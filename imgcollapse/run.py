"""Entry point: `python -m imgcollapse.run [overrides]` trains a chain of generations (see conf/)."""

from __future__ import annotations

import datetime
import functools
import logging
import os
import platform
import sys
import time
from pathlib import Path

import hydra
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import imgcollapse
from imgcollapse import chain, faults
from imgcollapse.config import Config, UserError, register, validate, validate_data
from imgcollapse.data import Splits
from imgcollapse.launch import hydra_launcher, resolve_threads
from imgcollapse.lock import RunLock
from imgcollapse.metrics import Settings, evaluate, setup_metrics
from imgcollapse.models.train import TrainingDiverged, enable_tf32, mixed_precision
from imgcollapse.report.run_report import build_run_report
from imgcollapse.resume import check_config, check_data
from imgcollapse.store import RunStore, WriteFailed
from imgcollapse.tracking import Tracker, accelerator_kwargs

log = logging.getLogger("imgcollapse")
register()


def _metadata(config: DictConfig, splits: Splits, classifier_accuracy: float | None, fid_real: float | None) -> dict:
    return {
        "config": OmegaConf.to_container(config, resolve=True),
        "dataset": {
            "num_train": len(splits.train),
            "num_heldout": len(splits.heldout),
            "image_shape": list(splits.train.shape),
            "class_names": splits.train.class_names,
            **splits.info,  # source, class counts, long tail, skipped files
        },
        "classifier_accuracy": classifier_accuracy,
        "fid_real": fid_real,  # FID of the real training pool against the held-out split: the floor
        "versions": {"imgcollapse": imgcollapse.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _report(run_dir: Path, tracker: Tracker, generation: int | None = None, row: dict | None = None) -> None:
    """Redraw the run's report from disk and log the generation to the tracker; never stops the chain."""
    try:
        began = time.perf_counter()
        build_run_report(run_dir)
        log.debug("report rebuilt in %.2f s", time.perf_counter() - began)
        if row is not None:
            tracker.log_generation(generation, row, run_dir / f"gen_{generation:03d}" / "grid.png")
    except Exception as e:  # figures are derived from files on disk and can be rebuilt later
        log.warning("report failed (%s: %s); rebuild it with: python -m imgcollapse.report %s",
                    type(e).__name__, e, run_dir)


def data_fingerprint(splits: Splits) -> dict[str, str]:
    """Content hashes of the training pool and held-out split: what run.json compares on resume."""
    return {"train": splits.train.fingerprint(), "heldout": splits.heldout.fingerprint()}


def run(cfg: DictConfig, run_dir: Path) -> list[dict]:
    """Validate the config, hold the run directory's lock, build every component and run the chain in it."""
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
        return _run(cfg, config, Path(run_dir))
    with RunLock(Path(run_dir)):  # one writer per run dir
        return _run(cfg, config, Path(run_dir))


def _run(cfg: DictConfig, config: Config, run_dir: Path) -> list[dict]:
    """Run the chain in `run_dir`; the main process holds its lock, any other one only helps train."""
    # Initialize.
    threads = resolve_threads(config.threads, hydra_launcher())
    torch.set_num_threads(threads)
    enable_tf32()
    accelerator = Accelerator(mixed_precision=mixed_precision(config.accelerator.mixed_precision),
                              cpu=not torch.cuda.is_available(), **accelerator_kwargs(config.logger.kind, run_dir))
    cache_dir = Path(config.cache_dir).expanduser()
    store = RunStore(run_dir)
    log.info("run dir %s (torch threads %d, %s, mixed precision %s%s)", run_dir, threads, accelerator.device,
             accelerator.mixed_precision,
             f", {accelerator.num_processes} processes" if accelerator.num_processes > 1 else "")
    if not accelerator.is_main_process:
        return _help_train(cfg, config, store, accelerator)
    for tmp in store.remove_temporaries():
        log.info("removed %s, left by an interrupted write", tmp)

    # Resume only with the config the run was started with (resume=force: with this one, recorded in run.json);
    # before any generation is finished there is nothing to protect, and the run starts afresh.
    started = store.read_json(run_dir / "run.json") if store.num_done() and (run_dir / "run.json").exists() else None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    changes = [] if started is None else [check_config(run_dir, started.get("config", {}), resolved,
                                                       mode=config.resume, next_generation=store.num_done())]

    # Data, split once.
    # (built as a partial and called here, so a UserError such as missing files is not wrapped by Hydra)
    splits: Splits = instantiate(cfg.dataset, _partial_=True)()
    log.info("dataset: %d training images, %d held out, shape %s", len(splits.train), len(splits.heldout),
             splits.train.shape)
    validate_data(config, len(splits.train), splits.train.num_classes if splits.train.labels is not None else None)
    fingerprint = data_fingerprint(splits)
    if started is not None:
        changes.append(check_data(run_dir, started.get("dataset", {}).get("fingerprint"), fingerprint,
                                  mode=config.resume, next_generation=store.num_done()))

    # Metrics: feature extractors with held-out reference statistics, all cached.
    m = config.metrics
    metrics = setup_metrics(
        splits, cache_dir, extractors=m.extractors, device=accelerator.device,
        classifier_epochs=m.classifier_epochs, classifier_seed=m.classifier_seed,
        inception_weights=m.inception_weights, inception_source=m.inception_source,
        inception_download=m.inception_download, inception_batch_size=m.inception_batch_size,
        settings=Settings(num_samples=m.num_samples, nearest_k=m.nearest_k, kid_subsets=m.kid_subsets,
                          kid_subset_size=m.kid_subset_size, near_copy_ratio=m.near_copy_ratio,
                          tail_fraction=m.tail_fraction, lost_threshold=m.lost_threshold, seed=config.seed),
    )
    accuracy = metrics.classifier.accuracy if metrics.classifier is not None else None
    fid_real = metrics.baseline.get("fid")
    if metrics.classifier is not None:
        log.info("metrics classifier accuracy %.3f; FID of real training pool vs held-out %.1f", accuracy, fid_real)
    metadata = started or _metadata(cfg, splits, accuracy, fid_real)
    metadata["dataset"].setdefault("fingerprint", fingerprint)  # a resume on other data is refused
    if changes := [c for c in changes if c]:  # resume=force: the run goes on with this config and data
        log.warning("resume=force: generations %d.. use a changed config: %s", changes[0]["from_generation"],
                    ", ".join(k for c in changes for k in c["changed"]))
        metadata["config"] = resolved
        metadata["dataset"]["fingerprint"] = fingerprint
        metadata["config_changes"] = metadata.get("config_changes", []) + changes
    metadata["metrics"] = metrics.metadata()  # refreshed on resume: what this invocation could compute
    store.write_json(run_dir / "run.json", metadata)

    # Model and regime, chosen by config.
    make_model = functools.partial(instantiate, cfg.model, image_shape=splits.train.shape,
                                   accelerator=accelerator, _convert_="all")
    regime = instantiate(cfg.regime)
    tracker = Tracker(accelerator, config.logger.kind, images=config.logger.images)
    tracker.start(OmegaConf.to_container(cfg, resolve=True))
    accelerator.wait_for_everyone()  # other processes (accelerate launch) wait for the checks and metrics set-up

    try:
        return chain.run(
            store=store, splits=splits, make_model=make_model, regime=regime,
            score=functools.partial(evaluate, metrics=metrics),
            generation=config.generation, seed=config.seed, num_synthetic=config.num_synthetic,
            conditions=config.sampling.conditions,
            grid_size=config.report.grid_size, strip_seeds=config.report.strip_seeds,
            after_generation=functools.partial(_report, run_dir, tracker),
            processes=accelerator if accelerator.num_processes > 1 else None,
        )
    finally:
        # Done, or stopped: the report once more, from whatever is on disk.
        _report(run_dir, tracker)
        tracker.finish()
        log.info("report: %s", run_dir / "report.html")


def _help_train(cfg: DictConfig, config: Config, store: RunStore, accelerator: Accelerator) -> list[dict]:
    """A non-main process of `accelerate launch`: the same data, the same models, its share of each batch."""
    splits: Splits = instantiate(cfg.dataset, _partial_=True)()
    make_model = functools.partial(instantiate, cfg.model, image_shape=splits.train.shape,
                                   accelerator=accelerator, _convert_="all")
    accelerator.wait_for_everyone()  # while the main process checks the run and sets up the metrics
    return chain.help_train(store=store, splits=splits, make_model=make_model, regime=instantiate(cfg.regime),
                            generation=config.generation, seed=config.seed, processes=accelerator)


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
