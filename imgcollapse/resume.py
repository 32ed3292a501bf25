"""Resuming a run directory only with the config (and data) it was started with.

`run.json` keeps the resolved config a run was started with and a fingerprint of its data. A rerun
compares its own config with it key by key: keys that cannot change results (IGNORED: how far to go, how
fast, where caches live, what is logged or drawn) may differ; any other difference is refused with the
list of differing keys, unless `resume=force`, which continues with the new values and appends the change
to `run.json`'s `config_changes`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imgcollapse.config import UserError

RESUME_MODES = ("check", "force")  # check: refuse a different config; force: continue with it
# Keys (and whole sections) that may change between the invocations of one run: they cannot change its numbers.
IGNORED = (
    "generation",  # extending a chain is the point of resuming
    "resume",
    "threads",  # CPU threads (the fault tests show equal numbers at equal thread counts)
    "cache_dir", "dataset.root", "dataset.cache_dir", "dataset.download",  # where data and caches live: the
    # data's content is compared by fingerprint instead
    "metrics.inception_download",  # whether a missing file may be fetched (its fingerprint keys the cache)
    "logger", "report",  # what is logged and drawn
)
ABSENT = "(absent)"


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
    keys = [k for k in old if not is_ignored(k)]
    keys += [k for k in new if k not in old and not is_ignored(k)]
    return {k: (old.get(k, ABSENT), new.get(k, ABSENT)) for k in keys if old.get(k, ABSENT) != new.get(k, ABSENT)}


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
