"""Shared fixtures: a per-session cache dir, and a way to compose and run the real config in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from imgcollapse.config import register

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
    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_chain(run_dir: Path, *overrides: str) -> list[dict]:
    """Run a chain in-process through the same function the entry point calls."""
    from imgcollapse.run import run

    return run(compose_config(*overrides), run_dir)


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m imgcollapse.run ARGS` in a subprocess: the real entry point, exit code and all (`env`: extra
    environment variables)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "imgcollapse.run", *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
