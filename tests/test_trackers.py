"""Trackers and progress: W&B offline through accelerate (one W&B run per run dir, continued on resume, grids
logged), a clear early error when its package is missing, and progress with ETAs in a log without a terminal."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
from conftest import conf, run_cli

from imgcollapse import progress
from imgcollapse.errors import ConfigError
from imgcollapse.tracking import init_kwargs, wandb_run_id

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

GMM = ("debug=smoke", "model=gmm", "threads=1", "report.draw=false")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is not installed (pip install 'imgcollapse[wandb]')")
def test_wandb_offline_logs_and_a_resumed_chain_continues_the_same_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for generation in (0, 1):
        result = run_cli(*GMM, "logger=wandb", f"generation={generation}", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                         env=env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {r.name.rsplit("-", 1)[1] for r in runs} == {wandb_run_id(run_dir)}  # one W&B run
    images = sorted(p.name for r in runs for p in (r / "files" / "media" / "images").glob("grid_*.png"))
    assert [name.split("_")[1] for name in images] == ["0", "1"]  # each generation's grid, at its step


def test_wandb_run_identity_and_sweep_group(tmp_path: Path) -> None:
    kwargs = init_kwargs("wandb", tmp_path / "outputs" / "seed=1", group="2026-11-30_07-00-00_000001")["wandb"]
    assert kwargs == {"id": wandb_run_id(tmp_path / "outputs" / "seed=1"), "resume": "allow",
                      "dir": str(tmp_path / "outputs" / "seed=1"), "name": "seed=1",
                      "group": "2026-11-30_07-00-00_000001"}
    assert wandb_run_id(tmp_path / "a") != wandb_run_id(tmp_path / "b")
    assert init_kwargs("tensorboard", tmp_path, None) == {}


def test_logger_wandb_without_its_package_fails_early(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without wandb looks like to find_spec
    with pytest.raises(ConfigError, match=r"logger.kind='wandb' is not allowed: .*pip install 'imgcollapse\[wandb\]'"):
        conf("logger", "wandb").check()


def test_progress_lines_with_etas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "_chain", None)  # restored after the test
    progress.begin_chain(first=2, last=5)
    progress.generation_done(100.0)  # generation 2 took 100 s; generation 3 trains now
    steps = progress.Steps(2000, "train ddpm", enabled=True)
    line = steps.line(800, 0.4, 12.0, loss=0.0312)
    # 12 s for 40%: 18 s left in this generation, then generations 4 and 5 at 100 s each: 218 s
    assert line == "gen 3/5  train ddpm 40% (800/2000 steps, 12 s)  loss 0.0312  ETA generation 18 s, chain 4 min"
    # generation 0 in 5 s (adopted from another chain) says nothing of the fits to come: this one's projection does
    progress.begin_chain(first=0, last=10)
    progress.generation_done(5.0)
    assert steps.line(800, 0.4, 12.0).endswith("ETA generation 18 s, chain 5 min")  # 18 s + 9 x 30 s
    progress.generation_done(60.0)  # generation 1 took 60 s: from now on the generations after 0 set the pace
    assert steps.line(800, 0.4, 12.0).endswith("ETA generation 18 s, chain 8 min")  # 18 s + 8 x 60 s


def test_training_logs_every_tenth_without_a_terminal(tmp_path: Path) -> None:
    """The command's output goes to files (as under Slurm): training logs its progress with ETAs."""
    run_dir = tmp_path / "run"
    result = run_cli("debug=smoke", "threads=1", "report.draw=false", "generation=0", "model.train_steps=100",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = [line for line in (run_dir / "run.log").read_text().splitlines() if "ETA generation" in line]
    # the NaN guard looks every 25 steps: 25, 50, 75 and 100 of 100 are the checkpoints that cross a tenth
    assert [line.split("train ddpm ")[1].split(" ")[0] for line in lines] == ["25%", "50%", "75%", "100%"], lines
    assert all("gen 0/0" in line and ", chain " in line for line in lines)


def test_a_study_logs_one_progress_line_for_all_its_chains(caplog: pytest.LogCaptureFixture) -> None:
    import threading

    done = {"chains": 0, "generations": 4}  # 4 generations were finished before this invocation
    calls, polled = [], threading.Event()

    def count() -> tuple[int, int]:
        calls.append(1)
        if len(calls) > 1:  # the first call is the watch's own start count
            polled.set()
        return done["chains"], done["generations"]

    watch = progress.StudyWatch("study claims", chains=4, generations=12, count=count, every=0, poll=0.01)
    assert watch.line(0, 4, 10) == ("study claims: 0/4 chains, 4/12 generations, 10 s elapsed, time left known "
                                    "after the first generation")
    assert watch.line(1, 8, 120) == "study claims: 1/4 chains, 8/12 generations, 2 min elapsed, about 2 min left"
    assert watch.line(4, 12, 600).endswith("10 min elapsed, done")
    with caplog.at_level("INFO", logger="imgcollapse"), watch:
        polled.wait(2)
        done.update(chains=2, generations=6)
        deadline = time.monotonic() + 5
        while "2/4 chains" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "study claims: 2/4 chains, 6/12 generations" in caplog.text
    assert caplog.text.count("0/4 chains") == 1  # a line when the count changes, not every poll
