"""Shared fixtures: a per-session cache dir, and a way to compose and run the real config in-process."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores: one torch thread each, set
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported (threads: null then resolves to 1 as well)

import copy  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import multiprocessing  # noqa: E402
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from imgcollapse.config import build, compose

CONF_DIR = str(Path(__file__).resolve().parents[1] / "imgcollapse" / "conf")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session: the metrics classifier trains once, as it would for a user."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["IMGCOLLAPSE_CACHE"] = str(path)
    return path


SMOKE_RUN = ("debug=smoke", "threads=1", "logger=tensorboard")  # what the shared smoke chain ran with


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One 3-generation smoke chain (generations 0-2, one thread, TensorBoard on) through the real entry point,
    shared by every test that only reads a finished run; a test that changes a run works on `copy_run`."""
    run_dir = tmp_path_factory.mktemp("smoke")
    result = run_cli(*SMOKE_RUN, f"hydra.run.dir={run_dir}", cwd=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def copy_run(source: Path, target: Path, generations: int | None = None) -> Path:
    """A copy of run dir `source` at `target`, keeping only its first `generations` finished generations."""
    shutil.copytree(source, target)
    if generations is not None:
        for d in target.glob("gen_[0-9][0-9][0-9]"):
            if int(d.name[4:]) >= generations:
                shutil.rmtree(d)
    return target


def compose_config(*overrides: str) -> DictConfig:
    """The real config tree composed with `overrides`, as `python -m imgcollapse.run` would see it.

    Hydra takes about 0.4 s a composition on these cores, and most tests differ from a composed tree only in a few
    values: the tree of the group choices (`model=vae`, `debug=smoke`) is composed once, and `key=value` overrides of
    keys it has are then set as Hydra would set them (its own parser types the value). Anything else (a new or
    removed key, a group, `hydra.*`, a value the schema refuses) composes for real, so every error is Hydra's own;
    `tests/test_configs.py` checks both paths give the same tree."""
    choices, values = [], []
    for override in overrides:
        key = override.split("=", 1)[0]
        simple = "=" in override and not key.startswith(("+", "~", "hydra")) and "@" not in key
        (values if simple and key not in _GROUPS else choices).append(override)
    cfg = copy.deepcopy(_composed(*choices))
    parser = OverridesParser.create()
    try:
        for override in values:
            parsed = parser.parse_override(override)
            key = parsed.key_or_group
            if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT or parsed.is_sweep_override():
                return compose(*overrides)
            OmegaConf.update(cfg, key, parsed.value(), merge=False)
    except Exception:  # a value the schema refuses: the real composition raises Hydra's own error
        return compose(*overrides)
    return cfg


_GROUPS = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}  # conf/'s groups: choices, never plain values
_ABSENT = object()


@functools.lru_cache(maxsize=64)
def _composed(*choices: str) -> DictConfig:
    return compose(*choices)


@functools.lru_cache
def _node(key: str, *overrides: str) -> Any:
    return OmegaConf.to_object(compose(*overrides)[key])


def conf(key: str, choice: str | None = None, **values: Any) -> Any:
    """A component's typed config as conf/ defines it (`conf("model", "gmm", n_components=3)`), with `values`
    replaced: the YAML stays the one home of every default."""
    return dataclasses.replace(_node(key, *([f"{key}={choice}"] if choice else [])), **values)


def digits(**values: Any):
    """The embedded digits, split as `dataset=digits` splits them (with `values` replaced)."""
    return build(conf("dataset", "digits", **values))


def make_model(name: str, shape: tuple[int, int, int] = (1, 8, 8), sampling: dict | None = None, **values: Any):
    """A model of conf/model/NAME.yaml with `values` replaced, sampling as conf/config.yaml's node with
    `sampling` replaced."""
    return build(conf("model", name, **values), image_shape=shape, sampling=conf("sampling", **(sampling or {})))


def run_chain(run_dir: Path, *overrides: str) -> list[dict]:
    """Run a chain in-process through the same function the entry point calls."""
    from imgcollapse.run import run

    return run(compose_config(*overrides), run_dir)


# Children of a fork server that imported the kit before any computation: forking the test process itself is
# unsafe once torch has run a parallel region (a child's first OpenMP region then waits forever on threads that
# did not survive the fork), and a new interpreter per call pays about 5 s of imports on 2 cores.
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["imgcollapse.run", "imgcollapse.report.__main__"])


def in_child(target: Any, *args: Any, timeout: float = 300, kill_after: float | None = None) -> int:
    """Run module-level `target(*args)` in a fresh child of the fork server, with this process's environment;
    returns its exit code (-9 when SIGKILL ended it). `kill_after`: SIGKILL it after that many seconds."""
    process = FORKSERVER.Process(target=_with_environment, args=(dict(os.environ), target, *args))
    process.start()
    process.join(timeout=kill_after if kill_after is not None else timeout)
    if process.is_alive():
        process.kill()
        process.join()
        if kill_after is None:
            raise subprocess.TimeoutExpired(str(target), timeout)
    return process.exitcode


def _with_environment(environment: dict[str, str], target: Any, *args: Any) -> None:
    os.environ.clear()
    os.environ.update(environment)
    target(*args)


def _entry_point(args: tuple[str, ...], cwd: str, out: str, err: str) -> None:
    """`python -m imgcollapse.run ARGS` in this process, stdout and stderr into files."""
    import imgcollapse.run as entry

    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115  (lives as long as the child)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.argv = ["imgcollapse.run", f"--config-path={CONF_DIR}", *args]
    try:
        entry.main()
    except SystemExit as e:
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(e.code) from None
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real entry point, `imgcollapse.run.main` (Hydra's command line, logging, exit codes), with ARGS, in a
    child of the fork server (`env`: extra environment variables). `run_module` tests the `python -m` path."""
    out_dir = Path(tempfile.mkdtemp(prefix="cli-"))
    out, err = out_dir / "stdout", out_dir / "stderr"
    saved = dict(os.environ)
    os.environ.update({**(env or {}), "PYTHONUNBUFFERED": "1"})
    try:
        code = in_child(_entry_point, args, str(cwd or REPO), str(out), str(err), timeout=timeout)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    result = subprocess.CompletedProcess(["imgcollapse.run", *args], code, out.read_text(), err.read_text())
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def run_module(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m imgcollapse.run ARGS` in a new interpreter, exactly as a user types it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "imgcollapse.run", *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


# The smoke study, shared by tests/test_study.py and tests/test_recorded.py ----------------------------------------
STUDY = ("study=smoke", "study.launcher=basic", "study.draw=none", "study.threads=1")  # one chain at a time, in-process


def study(root: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m imgcollapse.study` in a new interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "imgcollapse.study", *STUDY, f"study.dir={root}", *extra],
                          cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def shared_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke study, run once for the whole session even under pytest-xdist (the workers share its dir)."""
    from filelock import FileLock

    # the session's dir, the same for every xdist worker (a worker's base is a child of it); without xdist the base
    # itself: its parent is shared by every pytest run, and a study left there by older code would be reused
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    root = base / "shared_study"
    with FileLock(str(base / "shared_study.lock")):
        if not (root / "claims.json").exists():
            result = study(root)
            assert result.returncode == 0, result.stderr[-3000:]
    return root
