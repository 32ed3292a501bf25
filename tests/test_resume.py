"""Resuming safely: one writer per run dir, only the run's own config and data, finished generations untouched."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_chain

from imgcollapse import lock as lock_module
from imgcollapse.config import UserError
from imgcollapse.lock import LOCK_FILE, RunDirLocked, RunLock
from imgcollapse.resume import ABSENT, ResumeRefused, config_differences

SMOKE = ("debug=smoke", "threads=1")


@pytest.fixture(scope="module")
def finished_gen0(tmp_path_factory) -> Path:
    """A run dir with generation 0 finished; tests work on copies of it."""
    run_dir = tmp_path_factory.mktemp("gen0")
    run_chain(run_dir, *SMOKE, "generation=0")
    return run_dir


@pytest.fixture
def run_dir(finished_gen0, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_gen0, copy)
    return copy


def stamps(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()
            and "gen_" in str(p)}


# One writer per run dir ---------------------------------------------------------------------------------
def hold_lock(run_dir: Path) -> multiprocessing.Process:
    """A forked process that holds the run dir's lock until killed."""

    def child() -> None:
        RunLock(run_dir).acquire()
        time.sleep(600)

    process = multiprocessing.get_context("fork").Process(target=child, daemon=True)
    process.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        path = run_dir / LOCK_FILE
        if path.exists() and f'"pid": {process.pid}' in path.read_text():
            return process
        time.sleep(0.05)
    raise AssertionError("the child never took the lock")


def test_a_second_process_is_refused_and_a_dead_ones_lock_is_taken_over(run_dir, caplog):
    holder = hold_lock(run_dir)
    before = stamps(run_dir)
    try:
        with pytest.raises(RunDirLocked) as info:
            run_chain(run_dir, *SMOKE, "generation=1")
        message = str(info.value)
        assert f"in use by PID {holder.pid} on host {socket.gethostname()}" in message
        assert "one process at a time" in message and str(run_dir / LOCK_FILE) in message
        assert stamps(run_dir) == before and not (run_dir / "gen_001").exists()  # refused before any write
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    with caplog.at_level(logging.WARNING, logger="imgcollapse.lock"), RunLock(run_dir):
        pass
    assert f"taking over the lock of PID {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert "released" in json.loads((run_dir / LOCK_FILE).read_text())


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.parametrize(
    ("holder", "taken"),
    [
        (lambda: {"pid": os.getppid(), "host": socket.gethostname()}, False),  # alive here
        (lambda: {"pid": 1, "host": "elsewhere"}, False),  # another host: cannot tell, so refused
        (lambda: {"pid": dead_pid(), "host": socket.gethostname()}, True),  # dead here: taken over
        (lambda: {"pid": 1, "host": "elsewhere", "slurm": {"SLURM_JOB_ID": "42"}}, True),  # this job, requeued
        (lambda: {"pid": os.getppid(), "host": socket.gethostname(), "released": "2026-01-01"}, True),
    ],
)
def test_without_flock_the_pid_and_host_decide(tmp_path, monkeypatch, caplog, holder, taken):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_flock)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    content = holder()
    (tmp_path / LOCK_FILE).write_text(json.dumps(content))
    lock = RunLock(tmp_path)
    if not taken:
        with pytest.raises(RunDirLocked, match=f"in use by PID {content['pid']} on host {content['host']}"):
            lock.acquire()
        return
    with caplog.at_level(logging.WARNING, logger="imgcollapse.lock"):
        lock.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert ("taking over" in caplog.text) == ("released" not in content)
    lock.release()


# Only the run's own config and data -----------------------------------------------------------------------
def test_config_differences_skip_what_cannot_change_results():
    started = {"generation": 2, "threads": 1, "seed": 0, "model": {"lr": 0.003, "block_out_channels": [32, 48]},
               "logger": {"kind": "none"}, "report": {"grid_size": 64}, "cache_dir": "/a"}
    now = {"generation": 9, "threads": 4, "seed": 0, "model": {"lr": 0.01, "block_out_channels": [32, 64]},
           "logger": {"kind": "tensorboard"}, "report": {"grid_size": 16}, "cache_dir": "/b", "resume": "check",
           "sampling": {"steps": 4}}
    assert config_differences(started, now) == {"model.lr": (0.003, 0.01),
                                                "model.block_out_channels": ([32, 48], [32, 64]),
                                                "sampling.steps": (ABSENT, 4)}
    assert config_differences(started, started) == {}


def test_resume_with_another_config_is_refused_listing_the_keys(run_dir):
    before = stamps(run_dir)
    with pytest.raises(ResumeRefused) as info:
        run_chain(run_dir, *SMOKE, "generation=1", "model.lr=0.01", "sampling.steps=5")
    message = str(info.value)
    for part in ("model.lr=0.003 in the run, 0.01 now", "sampling.steps=4 in the run, 5 now", "resume=force",
                 "generations 1.."):
        assert part in message, (part, message)
    assert "generation=" not in message.split("Differing:")[1].split("Rerun")[0]  # generation may change
    assert stamps(run_dir) == before and not (run_dir / "gen_001").exists()


def test_keys_that_cannot_change_results_may_differ(run_dir):
    before = stamps(run_dir)
    rows = run_chain(run_dir, "debug=smoke", "threads=2", "report.grid_size=4", "generation=0")
    assert [r["generation"] for r in rows] == [0] and stamps(run_dir) == before


def test_resume_on_other_data_is_refused(run_dir):
    meta = json.loads((run_dir / "run.json").read_text())
    meta["dataset"]["fingerprint"]["train"] = "0" * 16  # as if the images had changed since the run started
    (run_dir / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ResumeRefused, match="dataset content"):
        run_chain(run_dir, *SMOKE, "generation=1")
    assert not (run_dir / "gen_001").exists()


# Finished generations are never rewritten ------------------------------------------------------------------
def test_a_finished_generation_after_an_unfinished_one_is_refused_not_redone(run_dir):
    shutil.copytree(run_dir / "gen_000", run_dir / "gen_002")  # finished, but gen_001 before it is not
    (run_dir / "gen_001").mkdir()
    before = stamps(run_dir)
    with pytest.raises(UserError, match="gen_002 is marked done but .*gen_001 before it is not"):
        run_chain(run_dir, *SMOKE, "generation=2")
    assert stamps(run_dir) == before


def test_a_damaged_finished_generation_is_a_clear_error(run_dir):
    (run_dir / "gen_000" / "samples.npz").write_bytes(b"not an npz")
    with pytest.raises(UserError, match="samples.npz cannot be read .* gen_000 is marked done"):
        run_chain(run_dir, *SMOKE, "generation=1")
