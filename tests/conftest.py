"""Shared fixtures: a per-session cache dir, and a way to compose and run the real config in-process."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from imgcollapse.config import build, compose

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session: the metrics classifier trains once, as it would for a user."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["IMGCOLLAPSE_CACHE"] = str(path)
    return path


def compose_config(*overrides: str) -> DictConfig:
    """The real config tree composed with `overrides`, as `python -m imgcollapse.run` would see it."""
    return compose(*overrides)


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


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real entry point, `imgcollapse.run.main` (Hydra's command line, logging, exit codes), with ARGS, in a
    forked child of this process: the imports are paid once per session instead of once per call (about 5 s
    each on 2 cores). `env`: extra environment variables. The `python -m` path itself is tested by
    `run_module`."""
    import imgcollapse.run as entry

    out_dir = Path(tempfile.mkdtemp(prefix="cli-"))
    out, err = out_dir / "stdout", out_dir / "stderr"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.chdir(cwd or REPO)
            os.environ.update(env or {}, PYTHONUNBUFFERED="1")
            for fd, path in ((1, out), (2, err)):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115  (lives as long as the child)
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            logging.getLogger().handlers.clear()  # pytest's capture handlers belong to the parent
            sys.argv = ["imgcollapse.run", f"--config-path={CONF_DIR}", *args]
            entry.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise subprocess.TimeoutExpired(["imgcollapse.run", *args], timeout)
        time.sleep(0.05)
    code = os.waitstatus_to_exitcode(status)
    result = subprocess.CompletedProcess(["imgcollapse.run", *args], code, out.read_text(), err.read_text())
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def run_module(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m imgcollapse.run ARGS` in a new interpreter, exactly as a user types it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "imgcollapse.run", *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
