"""The kit as a user installs it: a wheel (not an editable install) in a fresh venv, run from a directory that is
not the repository, finds its configs and runs a smoke chain through the `imgcollapse` console command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the kit's wheel installed from the local build, offline; torch and the other dependencies come
    from this interpreter's site-packages through a .pth file (no reinstall of GBs of wheels)."""
    root = tmp_path_factory.mktemp("packaging")
    source, wheels = root / "source", root / "wheels"  # a copy: setuptools writes build/ and *.egg-info into it
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name if source.exists() else _mkdir(source) / name)
    for package in ("imgcollapse", "hydra_plugins"):  # hydra_plugins: the study sweeper
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(source)], check=True, capture_output=True, text=True, timeout=300, env=_env())
    (wheel,) = wheels.glob("imgcollapse-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=_env())
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, text=True, timeout=300, env=_env())  # PYTHONPATH would make pip see the repo
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], check=True, capture_output=True, text=True, env=_env()).stdout.strip())
    # the outer venv's purelib, appended after the new venv's own: its editable finder for the repo is not run
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_wheel_ships_configs_license_and_commands(installed: Path) -> None:
    (wheel,) = installed.parent.glob("wheels/imgcollapse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "imgcollapse/conf/config.yaml" in names and "imgcollapse/conf/model/ddpm.yaml" in names
    assert "imgcollapse/conf/hydra/help/imgcollapse.yaml" in names
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "imgcollapse = imgcollapse.run:main" in entry_points
    assert "imgcollapse-report = imgcollapse.report.__main__:main" in entry_points
    assert "imgcollapse-study = imgcollapse.study:main" in entry_points
    assert "hydra_plugins/imgcollapse_study/study_sweeper.py" in names and "imgcollapse/conf/study/claims.yaml" in names


def test_installed_study_command_finds_its_sweeper(installed: Path, tmp_path: Path) -> None:
    """Hydra finds the study sweeper in the installed wheel (a plugin must live in the hydra_plugins namespace)."""
    result = subprocess.run([installed / "bin" / "imgcollapse-study", "study=smoke", "study.launcher=basic",
                             "study.seeds=1", "study.draw=none", "study.generation=1", "study.threads=1"], cwd=tmp_path,
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    claims = tmp_path / "outputs" / "study" / "smoke" / "claims.json"
    assert claims.exists() and "accumulation_helps" in claims.read_text()


def test_installed_command_runs_a_chain_outside_the_repo(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run([installed / "bin" / "python", "-c", "import imgcollapse; print(imgcollapse.__file__)"],
                           cwd=tmp_path, env=_env(), capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(installed), where  # the wheel's copy, not the repository's
    result = subprocess.run([installed / "bin" / "imgcollapse", "debug=smoke", "model=gmm", "generation=0",
                             "threads=1", "report.draw=false"], cwd=tmp_path, env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "debug=smoke,model=gmm"  # report.draw and threads: not the run's identity
    assert (run_dir / "gen_000" / "DONE").exists() and (run_dir / "run.json").exists()
    report = subprocess.run([installed / "bin" / "imgcollapse-report", str(run_dir)], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (run_dir / "report.html").exists()


def test_installed_help_lists_groups_and_examples(installed: Path, tmp_path: Path) -> None:
    result = subprocess.run([installed / "bin" / "imgcollapse", "--help"], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    groups = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ") and line.split()
              and not line.strip().startswith("imgcollapse")}
    assert {"model", "dataset", "regime", "experiment", "logger", "debug"} <= groups
    assert not groups & {"schema", "debug_model", "schema/model"}  # internal groups are not offered
    assert "imgcollapse debug=smoke" in result.stdout and "Exit codes" in result.stdout
