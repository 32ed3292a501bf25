"""Parallel jobs divide the cores: `threads: null` resolves to cores / jobs running at once."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir

from imgcollapse.config import register
from imgcollapse.threads import joblib_concurrency, resolve_threads


@pytest.mark.parametrize(
    ("threads", "launcher", "cores", "cap", "expected"),
    [
        (3, {"n_jobs": 2}, 8, None, 3),  # an explicit value wins
        (None, None, 8, None, 8),  # a single run takes every core
        (None, None, 8, "2", 2),  # ... unless OMP_NUM_THREADS caps it
        (None, {"n_jobs": 2}, 8, "1", 1),
        (None, {"n_jobs": 2}, 2, None, 1),  # two joblib jobs on 2 cores: one thread each, not 2 x 2
        (None, {"n_jobs": 2}, 8, None, 4),
        (None, {"n_jobs": -1}, 8, None, 1),  # joblib's -1: one job per core
        (None, {"n_jobs": -2}, 8, None, 1),  # -2: all cores but one run jobs
        (None, {"n_jobs": 16}, 8, None, 1),  # more jobs than cores: never 0
        (None, {"cpus_per_task": 4, "timeout_min": 60}, 16, None, 4),  # submitit: the job's cores
        (None, {"cpus_per_task": None, "timeout_min": 60}, 4, None, 4),
    ],
)
def test_threads_divide_the_cores(threads, launcher, cores, cap, expected):
    env = {} if cap is None else {"OMP_NUM_THREADS": cap}
    assert resolve_threads(threads, launcher, cores=cores, env=env) == expected


def test_joblib_concurrency_follows_joblib():
    assert [joblib_concurrency(n, 8) for n in (None, 1, 3, -1, -3)] == [1, 1, 3, 8, 6]


def _hydra_launcher(*overrides: str):
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True).hydra.launcher


def test_launcher_configs_compose_and_resolve_threads():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    joblib = _hydra_launcher("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert joblib._target_.endswith("JoblibLauncher")
    assert resolve_threads(None, joblib, cores=2, env={}) == 1
    slurm = _hydra_launcher("hydra/launcher=slurm", "hydra.launcher.partition=cpu")
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "cpu"
    assert slurm.max_num_timeout > 0  # a timed-out chain is requeued and resumes
    assert resolve_threads(None, slurm, cores=64, env={}) == slurm.cpus_per_task
    local = _hydra_launcher("hydra/launcher=submitit_local")
    assert local._target_.endswith("LocalLauncher")
