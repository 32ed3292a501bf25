"""One writer per run directory: `<run dir>/run.lock`, holding the PID and host of the process that runs it.

The lock itself is an exclusive `flock` on that file, which the kernel drops when its process dies however
it dies (SIGKILL, pre-emption, power cut on a network file system), so a dead run never blocks the next
one; the file's content (PID, host, start time, command, Slurm ids) names the holder in the refusal message
and in the warning when a dead process's lock is taken over. The content is read and rewritten inside a
claim, `.run.lock.claim`, a directory made with `mkdir` (atomic on NFS too), so two processes never both
see the lock free.

Where `flock` may be node-local (NFS mounted with local_lock, Lustre's localflock) it "succeeds" on every
node, so an unreleased holder named on another host is never taken over: the run stops and names it. Where
the file system has no `flock`, the content alone decides: a live process on this host, or any process on
another host, holds it; a dead one on this host is taken over. In both cases a Slurm job requeued after
pre-emption (same job id, higher SLURM_RESTART_COUNT: Slurm ended the earlier run first) takes over its own
earlier lock; other steps or tasks of the same allocation (same restart count) are separate processes.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgcollapse.errors import UserError, WriteFailed

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
CLAIM_DIR = ".run.lock.claim"  # exists only while a process reads and rewrites run.lock
SLURM_KEYS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_STEP_ID",
              "SLURM_PROCID")
SAME_JOB_KEYS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")


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
    """The holder as the messages name it: PID, host, start time and command."""
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
    data = memoryview((json.dumps(info) + "\n").encode())
    os.ftruncate(fd, 0)
    done = 0
    while done < len(data):  # a short write (file size limit, full disk) returns a count, not an error: go on
        done += os.pwrite(fd, data[done:], done)  # until the OS raises what stopped it
    os.fsync(fd)


def _restart_count(holder: dict[str, Any]) -> int | None:
    value = str(holder.get("slurm", {}).get("SLURM_RESTART_COUNT", "0"))  # unset until the first requeue
    return int(value) if value.isdigit() else None


def is_requeue(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    """Whether `me` is a later run of the holder's Slurm job (same job, higher restart count): Slurm ended the
    holder before requeueing it. Other steps and tasks of one allocation share its restart count: not a requeue."""
    theirs, mine = holder.get("slurm"), me.get("slurm")
    if not isinstance(theirs, dict) or not isinstance(mine, dict) or not theirs.get("SLURM_JOB_ID"):
        return False
    if any(theirs.get(k) != mine.get(k) for k in SAME_JOB_KEYS):
        return False
    before, now = _restart_count(holder), _restart_count(me)
    return before is not None and now is not None and before < now


def holder_is_gone(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    """Without flock: whether the process named in a lock file can no longer be running."""
    if is_requeue(holder, me):
        return True
    if holder.get("host") != me["host"]:
        return False  # no way to tell from here
    pid = holder.get("pid")
    return not isinstance(pid, int) or pid == me["pid"] or not pid_alive(pid)


def is_held(run_dir: Path) -> bool:
    """Whether a live process holds `run_dir`'s lock now, from the lock file's content alone: probing the flock
    could make the holder's own first attempt at it fail."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        holder = _read(fd)
    finally:
        os.close(fd)
    if holder is None or holder.get("released"):
        return False
    return not holder_is_gone(holder, {**this_process(), "pid": -1})  # -1: never this process's own pid


class RunLock:
    """`with RunLock(run_dir):` holds the run directory for this process or raises RunDirLocked."""

    claim_wait_s = 5.0  # how long to wait for another process's claim: it holds one for milliseconds
    claim_stale_s = 60.0  # a claim older than this was left by a process killed while taking the lock

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None
        self.flock = True  # False where the file system refuses flock: the file's content decides

    def acquire(self) -> None:
        """Take the lock or raise RunDirLocked naming its holder; a file that cannot be written is WriteFailed."""
        try:
            self._acquire()
        except OSError as e:
            if isinstance(e, WriteFailed):
                raise
            raise WriteFailed(self.path, e) from e

    def _acquire(self) -> None:
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
            with self._claim():
                holder = _read(fd)
                if holder is not None and not holder.get("released"):
                    self._take_over(holder, me)
                _write(fd, me)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def _take_over(self, holder: dict[str, Any], me: dict[str, Any]) -> None:
        """An unreleased holder is in the file: return if it cannot be running any more, else raise RunDirLocked."""
        if is_requeue(holder, me):
            log.warning("taking over the lock of %s: this is the same Slurm job, requeued (Slurm ended that run)",
                        describe(holder))
            return
        if self.flock and holder.get("host") != me["host"]:
            # flock may be node-local here (NFS local_lock, Lustre localflock): it says nothing about other hosts
            raise self._refusal(holder, "on another host: this host's flock cannot tell whether it still runs")
        if not self.flock and not holder_is_gone(holder, me):
            raise self._refusal(holder)
        log.warning("taking over the lock of %s, which is no longer running (it stopped without releasing %s)",
                    describe(holder), self.path)

    @contextlib.contextmanager
    def _claim(self) -> Iterator[None]:
        """Hold `.run.lock.claim` (mkdir: atomic, NFS included) while run.lock is read and rewritten."""
        claim = self.path.parent / CLAIM_DIR
        deadline = time.monotonic() + self.claim_wait_s
        while True:
            try:
                os.mkdir(claim)
                break
            except FileExistsError:
                pass
            try:
                age = time.time() - claim.stat().st_mtime
            except FileNotFoundError:
                continue  # released in between: try again
            if age > self.claim_stale_s:
                log.warning("removing %s, left %.0f s ago by a process stopped while it took the lock", claim, age)
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(claim)
                continue
            if time.monotonic() >= deadline:
                raise RunDirLocked(
                    f"{self.path.parent} is being claimed by another process ({claim} exists): one process at a "
                    f"time writes a run directory. If no other process is starting in it, delete {claim}.")
            time.sleep(0.05)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(claim)

    def _refusal(self, holder: dict[str, Any] | None, where: str = "") -> RunDirLocked:
        who = describe(holder) if holder else "another process"
        return RunDirLocked(
            f"{self.path.parent} is in use by {who}{' ' + where if where else ''}: one process at a time writes a "
            f"run directory. Wait for it to finish, or choose another hydra.run.dir. If that process is no longer "
            f"running, delete {self.path}.")

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
