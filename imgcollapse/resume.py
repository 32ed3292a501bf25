"""Resuming a run directory: the one home of what a rerun keeps, drops, checks and records.

`prepare` keeps the unbroken run of finished generations and removes anything after it. `run.json` keeps
the resolved config a run was started with and a fingerprint of its data; each finished generation keeps
`environment.json` (library versions, resolved threads, mixed precision, device, processes). A rerun
compares its own config with run.json key by key: keys that cannot change results (IGNORED: how far to go,
where caches live, what is logged or drawn) may differ; any other difference, other data, or resolved
settings that change the numbers (threads, mixed precision, device, processes) are refused with the list of
differences, unless `resume=force`, which continues with the new values and appends the change to
`run.json`'s `config_changes`. A change of library versions is reported and recorded, not refused.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import get_object

from imgcollapse.errors import DamagedFile, UserError
from imgcollapse.lock import is_held
from imgcollapse.store import ENVIRONMENT_FILE, FAILED, RunStore

log = logging.getLogger(__name__)

RESUME_MODES = ("check", "force")  # check: refuse a different config; force: continue with it
# Keys (and whole sections) that may change between the invocations of one run: they cannot change its numbers.
IGNORED = (
    "generation",  # extending a chain is the point of resuming
    "resume",
    "threads",  # compared as the resolved thread count instead (environment.json): null means "all cores"
    "cache_dir", "dataset.root", "dataset.cache_dir", "dataset.download",  # where data and caches live: the
    # data's content is compared by fingerprint instead
    "metrics.inception_download", "metrics.inception_weights",  # whether a missing file may be fetched, and
    # where it lives (its content's fingerprint keys the cache)
    "logger", "report",  # what is logged and drawn
    "metrics.calibrate",  # whether the calibration is written beside the run: no row depends on it
    "accelerator.mixed_precision",  # compared as the resolved precision instead: "auto" depends on the machine
    "chain.share_gen0",  # where an adopted generation 0 came from: checked against its source once, when adopted
)
# Keys added after runs were started without them, with the value that does what their absence did: a run.json
# without the key resumes under that value (any other value is a difference like any other).
ADDED = {
    "model.init": "scratch", "model.finetune_steps": None, "model.finetune_lr": None,  # kit 0.3: fine-tuning
    "model.budget": "steps", "model.epochs": None, "model.finetune_epochs": None,  # kit 0.3: compute budgets
    "model.estimator": "mle", "model.float_samples": False,  # kit 0.3: the Gaussian theory check
    "dataset.pool_size": None,  # kit 0.6: the scaling study's cut pool (absent: the whole pool)
    "dataset.tail_seed": None,  # kit 0.5: the long tail's rare classes drawn by a seed (absent: by class index)
    "regime.first_real": None,  # kit 0.3: fresh means fresh
    "regime.train_size": None,  # kit 0.6: augment's training set size (absent: the last samples' count)
    "chain.models": None, "chain.population": None,  # kit 0.3: model families in turn, or side by side
    "regime.verify_threshold": 0.0, "regime.verifier_seed": 1, "regime.verifier_epochs": 20,  # kit 0.3: verify
}
# Resolved settings (environment.json) that change a chain's numbers: moving a chain across them is refused.
NUMERIC_SETTINGS = ("threads", "mixed_precision", "device", "num_processes")
ABSENT = "(absent)"
# Keys generation 0 never reads: where each later generation starts and how long it fine-tunes
FINETUNE_KEYS = ("model.finetune_steps", "model.finetune_lr", "model.finetune_epochs")  # read by a fine-tune only
LATER_ONLY = ("model.init", *FINETUNE_KEYS)
# Regime keys generation 0 reads: its curation (the samples it keeps for generation 1), and fresh's first draw
CURATION_KEYS = ("regime.curation", "regime.keep_fraction", "regime.verify_threshold", "regime.verifier_seed",
                 "regime.verifier_epochs")
WATERMARK_KEYS = ("regime.watermark_strength", "regime.watermark_block", "regime.watermark_seed")  # filter=watermark
VERIFY_KEYS = ("regime.verify_threshold", "regime.verifier_seed", "regime.verifier_epochs")  # curation=verify only
SHARED_FILE = "shared_gen0.json"  # in an adopting run dir: where its generation 0 came from


class ResumeRefused(UserError):
    """The run directory was started with another config or other data."""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {"a.b": value}; lists are values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def is_ignored(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in IGNORED)


def config_differences(started: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (value the run has, value now)} for every key that differs and may not."""
    old, new = flatten(started), flatten(now)
    if "verify" not in (old.get("regime.curation"), new.get("regime.curation")):  # the verifier's keys are unread
        for key in VERIFY_KEYS:
            old.pop(key, None), new.pop(key, None)
    if not (old.get("dataset.long_tail") or new.get("dataset.long_tail")):  # which classes are rare: no tail, unread
        old.pop("dataset.tail_seed", None), new.pop("dataset.tail_seed", None)
    if "watermark" not in (old.get("regime.filter"), new.get("regime.filter")):  # the mark's keys are unread
        for k in WATERMARK_KEYS:
            old.pop(k, None), new.pop(k, None)
    if old.get("model.init", "scratch") == new.get("model.init", "scratch") == "scratch":  # no fine-tune: its
        for key in FINETUNE_KEYS:  # budget is unread (study=families' chains began in kit 0.4's study=claims)
            old.pop(key, None), new.pop(key, None)
    if old.get("dataset.pool_size") is None and new.get("dataset.pool_size") is None:  # the whole pool: seed unread
        old.pop("dataset.pool_seed", None), new.pop("dataset.pool_seed", None)
    keys = [k for k in old if not is_ignored(k)]
    keys += [k for k in new if k not in old and not is_ignored(k)]
    differences = {k: (old.get(k, ABSENT), new.get(k, ABSENT)) for k in keys}
    return {k: (was, now) for k, (was, now) in differences.items()
            if was != now and not (k in ADDED and ADDED[k] == (now if was == ABSENT else was)
                                   and ABSENT in (was, now))}


def describe_differences(differences: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}={old!r} in the run, {new!r} now" for k, (old, new) in differences.items())


def _refuse_or_record(differences: dict[str, tuple[Any, Any]], run_dir: Path, mode: str, next_generation: int,
                      what: str) -> dict[str, Any] | None:
    if not differences:
        return None
    if mode != "force":
        raise ResumeRefused(
            f"{run_dir} was started with {what}, and resuming it now would mix two experiments in one chain. "
            f"Differing: {describe_differences(differences)}. Rerun with the run's values, choose another "
            f"hydra.run.dir, or add resume=force to train generations {next_generation}.. with the new values "
            "(run.json records the change).")
    return {"from_generation": next_generation, "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "changed": {k: {"was": old, "now": new} for k, (old, new) in differences.items()}}


def check_config(run_dir: Path, started: Mapping[str, Any], now: Mapping[str, Any], *, mode: str,
                 next_generation: int) -> dict[str, Any] | None:
    """Refuse (ResumeRefused) to continue `run_dir`, started with config `started`, with config `now`, unless
    `mode` is 'force'; returns the change to append to run.json's `config_changes` (None: no change)."""
    return _refuse_or_record(config_differences(started, now), run_dir, mode, next_generation, "another config")


def check_data(run_dir: Path, started: Mapping[str, str] | None, now: Mapping[str, str], *, mode: str,
               next_generation: int) -> dict[str, Any] | None:
    """The same for the data's fingerprint (content of the training pool and held-out split); a run that
    recorded none is not checked."""
    differences = {}
    if started is not None and dict(started) != dict(now):
        differences["dataset content (fingerprint of images and labels)"] = (dict(started), dict(now))
    return _refuse_or_record(differences, run_dir, mode, next_generation, "other data")


@dataclass
class Opened:
    """What `open_run` found: the run's record (None before its first finished generation), the first
    generation to train, and the changes a forced resume will record."""

    started: dict[str, Any] | None
    start: int
    changes: list[dict[str, Any]] = field(default_factory=list)

    def to_train(self, generation: int) -> bool:
        """Whether this invocation trains anything (`generation` is the last one asked for)."""
        return self.start <= generation


def open_run(store: RunStore, resolved: Mapping[str, Any], environment: Mapping[str, Any], *, mode: str,
             generation: int) -> Opened:
    """Remove what a killed writer left, keep the unbroken run of finished generations, and check this
    invocation's config and resolved settings against the run's record, when there is something left to train.
    Only safe while holding the run's lock."""
    for tmp in store.remove_temporaries():
        log.info("removed %s, left by an interrupted write", tmp)
    opened = Opened(read_started(store), prepare(store))
    if opened.started is not None and opened.to_train(generation):  # nothing to train: nothing can be mixed
        opened.changes.append(check_config(store.root, opened.started["config"], resolved, mode=mode,
                                           next_generation=opened.start))
        opened.changes.append(check_environment(store, environment, mode=mode, next_generation=opened.start))
    return opened


def record(opened: Opened, resolved: dict[str, Any], dataset: dict[str, Any], facts: dict[str, Any],
           environment: dict[str, Any]) -> dict[str, Any]:
    """run.json: the config and data a run was started with (kept on resume, replaced where resume=force changed
    them), the changes since, this invocation's environment and `facts` (metrics set-up, refreshed each time)."""
    changes = [c for c in opened.changes if c]
    started = opened.started
    run = dict(started) if started else {"config": resolved, "dataset": dataset, "versions": environment["versions"],
                                         "started": datetime.datetime.now().isoformat(timespec="seconds")}
    forced = [c for c in changes if c.get("changed")]
    if forced:  # resume=force: the run goes on with this config and data
        log.warning("resume=force: generations %d.. use a changed config: %s", forced[0]["from_generation"],
                    ", ".join(k for c in forced for k in c["changed"]))
        run["config"], run["dataset"] = resolved, dataset
    if changes:
        run["config_changes"] = run.get("config_changes", []) + changes
    run["environment"] = environment  # this invocation's; each generation keeps its own in environment.json
    return {**run, **facts}


def prepare(store: RunStore) -> int:
    """Keep the unbroken run of finished generations, remove anything after it (a finished generation is never
    rewritten: one past a gap is refused, not redone) and rebuild the tables; returns the first generation to
    train. Only safe while holding the run's lock."""
    start = store.num_done()
    stale = store.stale_generations(start)
    if orphans := [g for g in stale if store.is_done(g)]:
        raise UserError(f"{store.gen_dir(orphans[0])} is marked done but {store.gen_dir(start)} before it is not "
                        "(the run dir was edited by hand?); finished generations are never rewritten: move "
                        f"gen_{orphans[0]:03d} and later away, or restore gen_{start:03d}/DONE, then rerun")
    for g in stale:
        store.reset_generation(g)
    if start or (store.root / "metrics.csv").exists():  # a kill between DONE and the tables left them short
        store.write_tables()
    return start


def read_started(store: RunStore) -> dict[str, Any] | None:
    """run.json of a run with finished generations (None before the first one: nothing to protect yet).
    Finished generations without a readable run.json are refused: what they were made with is unknown."""
    path = store.root / "run.json"
    if not store.num_done():
        return None
    if not path.exists():
        raise UserError(f"{store.root} has finished generations (0..{store.num_done() - 1}) but no run.json, so "
                        "the config they were made with is unknown and resuming could mix two experiments. "
                        "Restore run.json, or choose another hydra.run.dir")
    what_to_do = "Restore run.json from a backup, or choose another hydra.run.dir"
    started = store.read_json(path, what_to_do)
    if not (isinstance(started, dict) and isinstance(started.get("config"), dict)
            and isinstance(started.get("dataset"), dict)):
        raise DamagedFile(path, "not a run record: a JSON object with a config and a dataset", what_to_do)
    return started


def check_environment(store: RunStore, now: Mapping[str, Any], *, mode: str,
                      next_generation: int) -> dict[str, Any] | None:
    """Compare this invocation's resolved settings and versions with the last finished generation's
    (environment.json): numeric settings that differ are refused unless `mode` is 'force'; changed versions
    are logged. Returns the change to record (None: none)."""
    if not next_generation:
        return None
    path = store.gen_dir(next_generation - 1) / ENVIRONMENT_FILE
    if not path.exists():  # written by kit 0.1, which kept none
        return None
    what_to_do = "Restore it, or delete it to resume without comparing the environment"
    before = store.read_json(path, what_to_do)
    if not isinstance(before, dict):
        raise DamagedFile(path, "not a JSON object", what_to_do)
    settings = {f"{k} (resolved)": (before.get(k), now.get(k)) for k in NUMERIC_SETTINGS
                if before.get(k) != now.get(k)}
    versions = {k: (before.get("versions", {}).get(k), v) for k, v in now.get("versions", {}).items()
                if before.get("versions", {}).get(k) != v}
    if versions:
        log.warning("library versions changed since generation %d: %s; generations %d.. are made with the new ones "
                    "(recorded in run.json)", next_generation - 1, describe_differences(versions), next_generation)
    change = _refuse_or_record(settings, store.root, mode, next_generation, "other resolved settings")
    if versions:
        change = change or {"from_generation": next_generation,
                            "time": datetime.datetime.now().isoformat(timespec="seconds"), "changed": {}}
        change["versions"] = {k: {"was": old, "now": new} for k, (old, new) in versions.items()}
    return change


# Adopting another run's generation 0 (studies) ----------------------------------------------------
def _component(target: Any) -> Any:
    """The class a `_target_` names, or None where it does not import (a signature then keeps every key)."""
    try:
        return get_object(target) if isinstance(target, str) else None
    except Exception:  # Hydra wraps ImportError and AttributeError in its own
        return None


def generation0_steps(flat: Mapping[str, Any], pool_size: int | None) -> int | None:
    """The optimizer steps generation 0 trains for on a pool of `pool_size`, as the model's own config sizes a fit
    from scratch (`fit_budget`); None where the model has no budget (a run from before budgets, a GMM)."""
    config_class = getattr(_component(flat.get("model._target_")), "Config", None)
    if pool_size is None or flat.get("model.budget") is None or not hasattr(config_class, "fit_budget"):
        return None
    names = {f.name for f in dataclasses.fields(config_class)}
    values = {k[len("model."):]: v for k, v in flat.items() if k.startswith("model.") and k[len("model."):] in names}
    try:
        return config_class(**values).fit_budget(pool_size, finetune=False).steps
    except Exception:  # a user's config that cannot be rebuilt from the record: keep every budget key instead
        return None


def generation0_signature(resolved: Mapping[str, Any], pool_size: int | None = None) -> dict[str, Any]:
    """The keys of a resolved config that generation 0's files depend on: two configs with equal signatures (and
    equal data and numeric settings) make bit-identical generations 0. Conservative: a key left in that gen 0
    does not read costs a shared generation, never a wrong one. With the real pool's size, a compute budget is
    replaced by the optimizer steps it gives generation 0 (budget=epochs sized to match budget=steps shares)."""
    flat = {k: v for k, v in flatten(resolved).items() if not is_ignored(k) and k not in LATER_ONLY}
    steps = generation0_steps(flat, pool_size)
    if steps is not None:
        for key in ("model.budget", "model.epochs", "model.train_steps"):
            flat.pop(key, None)
        flat["model.(generation 0 steps)"] = steps
    if getattr(_component(flat.get("regime._target_")), "first_set_is_pool", False):
        # the rest of the regime shapes later generations' training sets only
        flat = {k: v for k, v in flat.items() if not k.startswith("regime.") or k in CURATION_KEYS}
        flat["regime._target_"] = "(generation 0: the whole real pool)"
    if flat.get("regime.curation") == "none":  # nothing curated: the curation's settings are never read
        flat = {k: v for k, v in flat.items() if k not in CURATION_KEYS[1:]}
    return dict(sorted(flat.items()))


def fit0_signature(resolved: Mapping[str, Any], pool_size: int | None = None) -> dict[str, Any]:
    """The keys generation 0's *fit* depends on: its signature without the curation, which only selects among the
    fitted model's samples, and with an alternation that starts with `model`'s own family taken as `model` alone (one
    that starts with another family as that family's own loop). Chains that differ only there can share generation
    0's model and make the rest of generation 0 themselves."""
    flat = {k: v for k, v in generation0_signature(resolved, pool_size).items() if k not in CURATION_KEYS}
    models = flat.get("chain.models")
    if isinstance(models, list) and models and models[0] == "model":  # `model` trains generation 0 either way
        flat = {k: v for k, v in flat.items() if not k.startswith("families.")}
        flat["chain.models"] = None  # as a chain without an alternation has it
    elif isinstance(models, list) and models:  # another family's own loop and an alternation it starts: its fit
        flat["chain.models"] = models[:1]
    return flat


SHARE_WAIT_S = 120.0  # how long a source no live process holds may take to start (a study launches it first)


def wait_for_generation0(source: Path, poll_s: float = 0.5, grace_s: float = SHARE_WAIT_S) -> None:
    """Wait while another process trains `source`'s generation 0 (a study launches a group's first chain before
    the chains that adopt its generation 0, so they may start while it trains). Returns once it is done, the
    source has failed (FAILED), or no live process has held the source for `grace_s`."""
    import time

    store, waited, unheld_since = RunStore(source), False, time.monotonic()
    while not store.is_done(0) and not (source / FAILED).exists():
        if is_held(source):
            unheld_since = time.monotonic()
        elif time.monotonic() - unheld_since > grace_s:
            return
        if not waited:
            log.info("waiting for %s to finish generation 0 (this chain adopts it)", source)
            waited = True
        time.sleep(poll_s)


def adopt_generation0(store: RunStore, source: Path, resolved: Mapping[str, Any], environment: Mapping[str, Any],
                      fingerprint: Mapping[str, str] | None) -> Path | None:
    """Adopt `source`'s finished generation 0 into this (empty) run, after checking that this run would have made
    the same thing: the same data fingerprint and numeric settings, and the same generation-0 signature (its files
    are copied bit for bit; returns None) or the same fit signature (returns the source's gen_000 dir: this run loads
    its model and samples, curates and scores generation 0 itself). UserError naming every difference otherwise.
    Only safe while holding the run's lock."""
    import shutil

    source = Path(source)
    src = RunStore(source)
    wait_for_generation0(source)
    if not src.is_done(0):
        raise UserError(f"chain.share_gen0={source}: it has no finished generation 0 ({source}/gen_000/DONE); run it "
                        "first, or set chain.share_gen0=null to train this chain's own")
    what_to_do = "Rerun the source chain, or set chain.share_gen0=null"
    started = src.read_json(source / "run.json", what_to_do)
    before = src.read_json(src.gen_dir(0) / ENVIRONMENT_FILE, what_to_do)
    pool = started.get("dataset", {}).get("num_train")

    def compare(signature: Any) -> dict[str, tuple[Any, Any]]:
        mine, theirs = signature(resolved, pool), signature(started.get("config", {}), pool)
        return {k: (theirs.get(k, ABSENT), mine.get(k, ABSENT)) for k in sorted({*mine, *theirs})
                if mine.get(k, ABSENT) != theirs.get(k, ABSENT)}

    files, fit = compare(generation0_signature), compare(fit0_signature)
    differences = {f"{k} (resolved)": (before.get(k), environment.get(k)) for k in NUMERIC_SETTINGS
                   if before.get(k) != environment.get(k)}
    if fingerprint is not None and dict(started.get("dataset", {}).get("fingerprint") or {}) != dict(fingerprint):
        differences["dataset content (fingerprint)"] = (started["dataset"].get("fingerprint"), dict(fingerprint))
    if differences or fit:
        differences.update(fit)
        raise UserError(f"chain.share_gen0={source}: its generation 0 is not the one this chain would train. "
                        f"Differing: {'; '.join(f'{k}={a!r} there, {b!r} here' for k, (a, b) in differences.items())}."
                        " Set chain.share_gen0=null to train this chain's own")
    if files:  # only the selection differs: the same model, sampled, curated and scored here
        store.write_json(store.root / SHARED_FILE, {"source": str(source.resolve()), "generation": 0,
                                                     "shared": "model", "differing": sorted(files),
                                                     "time": datetime.datetime.now().isoformat(timespec="seconds")})
        log.info("generation 0 starts from the model %s trained (it differs only in %s): not trained again", source,
                 ", ".join(sorted(files)))
        return src.gen_dir(0)
    target = store.gen_dir(0)
    temporary = target.with_name(f".{target.name}.adopted.tmp")  # what remove_temporaries cleans after a kill
    shutil.rmtree(temporary, ignore_errors=True)
    shutil.copytree(src.gen_dir(0), temporary)  # DONE comes along, so the rename alone makes it count
    shutil.rmtree(target, ignore_errors=True)  # an unfinished attempt (prepare has reset it already)
    temporary.rename(target)
    store.write_json(store.root / SHARED_FILE, {"source": str(source.resolve()), "generation": 0, "shared": "files",
                                                 "time": datetime.datetime.now().isoformat(timespec="seconds")})
    store.write_tables()
    log.info("adopted generation 0 of %s (same signature, data and numeric settings): not trained again", source)
    return None
