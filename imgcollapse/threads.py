"""Torch threads per job: how many jobs run at once under the Hydra launcher, and the cores each gets.

Two torch processes with 2 threads each on 2 cores run 8x slower than one, so `threads: null` divides the
cores among the jobs that run at the same time: joblib runs `n_jobs` at once; a submitit job gets
`cpus_per_task` cores (Slurm pins them; submitit_local starts every job at once, so set it there too).
`OMP_NUM_THREADS`, when set (joblib's workers set it to cores / n_jobs), caps the result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, which Slurm and taskset restrict)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _env_thread_cap(env: Mapping[str, str]) -> int | None:
    value = env.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def joblib_concurrency(n_jobs: int | None, cores: int) -> int:
    """Jobs joblib runs at once for `n_jobs` (its convention: None is 1, -1 all cores, -2 all but one)."""
    if n_jobs is None or n_jobs == 0:
        return 1
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)
    return n_jobs


def resolve_threads(threads: int | None, launcher: Mapping[str, Any] | None, cores: int | None = None,
                    env: Mapping[str, str] | None = None) -> int:
    """Torch threads for this job: `threads` if set, else this job's share of the cores.

    `launcher` is the Hydra launcher config of a multirun job (None for a single run); `env` the
    environment (default: this process's), whose OMP_NUM_THREADS caps the share.
    """
    if threads:
        return threads
    cores = cores or available_cores()
    env_cap = _env_thread_cap(os.environ if env is None else env)
    share = cores
    if launcher is not None and "n_jobs" in launcher:  # joblib
        share = cores // joblib_concurrency(launcher.get("n_jobs"), cores)
    elif launcher is not None and launcher.get("cpus_per_task"):  # submitit (slurm or local)
        share = min(cores, int(launcher["cpus_per_task"]))
    if env_cap is not None:
        share = min(share, env_cap)
    return max(1, share)


def hydra_launcher() -> Mapping[str, Any] | None:
    """The launcher config if this process is a job of a Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return hydra.launcher if hydra.mode == RunMode.MULTIRUN else None
