"""One writer per run directory: `<run dir>/run.lock`, holding the PID and host of the process that runs it.

The lock itself is an exclusive `flock` on that file, which the kernel drops when its process dies however
it dies (SIGKILL, pre-emption, power cut on a network file system), so a dead run never blocks the next
one; the file's content (PID, host, start time, command) names the holder in the refusal message and in
the warning when a dead process's lock is taken over. Where the file system has no `flock`, the content
decides: a live process on this host, or any process on another host, holds it; a dead one on this host
is taken over. A Slurm job requeued after pre-emption (same job id) takes over its own earlier lock.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from imgcollapse.config import UserError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
SLURM_KEYS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")


class RunDirLocked(UserError):
    """Another process is running the chain in this run directory."""


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_process() -> dict[str, Any]:
    """What the lock file says about its holder."""
    info: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                            "started": datetime.datetime.now().isoformat(timespec="seconds"),
                            "command": " ".join(sys.argv)}
    slurm = {k: os.environ[k] for k in SLURM_KEYS if os.environ.get(k)}
    if slurm:
        info["slurm"] = slurm
    return info


def describe(holder: dict[str, Any]) -> str:
    return (f"PID {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')}: "
            f"{holder.get('command') or 'unknown command'})")


def _read(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        holder = json.loads(raw.decode()) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # written by a process killed midway: no one to name
    return holder if isinstance(holder, dict) else None


def _write(fd: int, info: dict[str, Any]) -> None:
    data = (json.dumps(info) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def holder_is_gone(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    """Without flock: whether the process named in a lock file can no longer be running."""
    if holder.get("slurm") and holder.get("slurm") == me.get("slurm"):
        return True  # the same Slurm job, requeued: Slurm ended its earlier run before starting this one
    if holder.get("host") != me["host"]:
        return False  # no way to tell from here
    pid = holder.get("pid")
    return not isinstance(pid, int) or pid == me["pid"] or not pid_alive(pid)


class RunLock:
    """`with RunLock(run_dir):` holds the run directory for this process or raises RunDirLocked."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None
        self.flock = True  # False where the file system refuses flock: the file's content decides

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = this_process()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._refusal(_read(fd)) from None
                self.flock = False
                log.warning("%s: the file system does not support flock (%s); the lock relies on the PID and "
                            "host written in it", self.path, e)
            holder = _read(fd)
            if holder is not None and not holder.get("released"):
                if not self.flock and not holder_is_gone(holder, me):
                    raise self._refusal(holder)
                log.warning("taking over the lock of %s, which is no longer running (it stopped without "
                            "releasing %s)", describe(holder), self.path)
            _write(fd, me)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def _refusal(self, holder: dict[str, Any] | None) -> RunDirLocked:
        who = describe(holder) if holder else "another process"
        return RunDirLocked(
            f"{self.path.parent} is in use by {who}: one process at a time writes a run directory. Wait for it "
            f"to finish, or choose another hydra.run.dir. If no such process is running, delete {self.path}.")

    def release(self) -> None:
        """Mark the file released (keeping who held it) and drop the flock; the file stays, so the lock never
        changes inode under a process waiting on it."""
        if self.fd is None:
            return
        try:
            holder = _read(self.fd) or {}
            _write(self.fd, {**holder, "released": datetime.datetime.now().isoformat(timespec="seconds")})
        except OSError as e:  # a full disk must not hide the run's own outcome
            log.warning("could not mark %s released: %s", self.path, e)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
