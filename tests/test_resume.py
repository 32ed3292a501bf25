"""Resuming safely: one writer per run dir, only the run's own config and data, finished generations untouched."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import copy_run, run_chain, run_cli

from imgcollapse import lock as lock_module
from imgcollapse.config import UserError
from imgcollapse.lock import LOCK_FILE, RunDirLocked, RunLock
from imgcollapse.resume import ABSENT, ResumeRefused, config_differences

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

SMOKE = ("debug=smoke", "threads=1", "report.draw=false")  # the figures: test_report.py


@pytest.fixture
def run_dir(smoke_run, tmp_path) -> Path:
    """A run dir with generation 0 finished: a copy of the session's smoke chain (made with SMOKE's one thread)."""
    return copy_run(smoke_run[0], tmp_path / "run", generations=1)


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
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # this job, requeued once (another step would have the same)
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


def test_the_verifiers_keys_count_only_where_a_verifier_is_trained():
    started = {"regime": {"curation": "none", "verifier_seed": 1, "verify_threshold": 0.0}}
    now = {"regime": {"curation": "none", "verifier_seed": 4, "verify_threshold": 0.9}}
    assert config_differences(started, now) == {}  # a run from before the verifier followed the chain's seed
    verified = {"regime": {**now["regime"], "curation": "verify"}}
    assert config_differences({"regime": {**started["regime"], "curation": "verify"}}, verified) == {
        "regime.verifier_seed": (1, 4), "regime.verify_threshold": (0.0, 0.9)}


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


def test_moving_a_chain_to_other_resolved_settings_is_refused(run_dir):
    """threads: null means "all cores": a chain resumed where that resolves differently would make its next
    generations with other numbers, so the resolved value is compared, not the key."""
    environment = json.loads((run_dir / "gen_000" / "environment.json").read_text())
    assert environment["threads"] == 1 and environment["mixed_precision"] == "no" and environment["device"] == "cpu"
    assert environment["versions"]["torch"] and environment["versions"]["imgcollapse"]
    with pytest.raises(ResumeRefused, match=r"threads \(resolved\)=1 in the run, 2 now"):
        run_chain(run_dir, "debug=smoke", "threads=2", "generation=1")
    assert not (run_dir / "gen_001").exists()


def test_changed_library_versions_are_reported_and_recorded(run_dir, caplog):
    path = run_dir / "gen_000" / "environment.json"
    environment = json.loads(path.read_text())
    environment["versions"]["torch"] = "0.0.1"
    path.write_text(json.dumps(environment))
    with caplog.at_level(logging.WARNING, logger="imgcollapse"):
        rows = run_chain(run_dir, *SMOKE, "generation=1")
    assert len(rows) == 2 and "library versions changed since generation 0: torch='0.0.1' in the run" in caplog.text
    changes = json.loads((run_dir / "run.json").read_text())["config_changes"]
    assert changes[-1]["versions"]["torch"]["was"] == "0.0.1" and changes[-1]["from_generation"] == 1


def test_finished_generations_without_run_json_are_refused(run_dir):
    (run_dir / "run.json").unlink()
    with pytest.raises(UserError, match="finished generations .* but no run.json"):
        run_chain(run_dir, *SMOKE, "generation=1")
    assert not (run_dir / "gen_001").exists()


@pytest.mark.parametrize("damage", [b"", b"{not json", b"[1, 2]", b"{}", b'{"config": null, "dataset": {}}'])
def test_a_corrupt_run_json_is_a_clear_error(run_dir, damage):
    (run_dir / "run.json").write_bytes(damage)
    with pytest.raises(UserError, match="run.json"):
        run_chain(run_dir, *SMOKE, "generation=1")
    assert not (run_dir / "gen_001").exists()


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


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the compressed images: a CRC or zlib error
    path.write_bytes(bytes(data))


DAMAGES = {
    "samples-truncated": ("gen_000/samples.npz", truncate),
    "samples-empty": ("gen_000/samples.npz", lambda p: p.write_bytes(b"")),
    "samples-bit-flipped": ("gen_000/samples.npz", flip_a_bit),
    "samples-not-npz": ("gen_000/samples.npz", lambda p: p.write_bytes(b"not an npz")),
    "samples-missing": ("gen_000/samples.npz", lambda p: p.unlink()),
    "metrics-missing": ("gen_000/metrics.json", lambda p: p.unlink()),
    "metrics-corrupt": ("gen_000/metrics.json", lambda p: p.write_bytes(b"{\"fid\": 1.")),
    "metrics-not-a-row": ("gen_000/metrics.json", lambda p: p.write_bytes(b"[1, 2]")),
    "environment-not-an-object": ("gen_000/environment.json", lambda p: p.write_bytes(b"null")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_finished_generation_is_a_clear_error(run_dir, damage):
    name, spoil = DAMAGES[damage]
    spoil(run_dir / name)
    with pytest.raises(UserError, match=f"{re.escape(name)} cannot be read .*(gen_000|delete it)"):
        run_chain(run_dir, *SMOKE, "generation=1")
    assert not (run_dir / "gen_001").exists()


def test_a_damaged_file_exits_2_with_one_message_and_no_traceback(run_dir):
    flip_a_bit(run_dir / "gen_000" / "samples.npz")
    result = run_cli(*SMOKE, "generation=1", f"hydra.run.dir={run_dir}")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "samples.npz cannot be read" in output and "move gen_000 and every later" in output
    assert "Traceback" not in output
