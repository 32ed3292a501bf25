"""The run directory: layout, atomic writes, completion markers and the metrics table built from them.

A generation counts only when `gen_XXX/DONE` exists. Every file is written to a temporary name in its
own directory and renamed, so a crash leaves either the old file or the new one, never half of one.
`metrics.csv` and `metrics.jsonl` are derived from the finished generations' `metrics.json`, so they
can always be rebuilt and never disagree with what is on disk.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import functools
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgcollapse import faults
from imgcollapse.errors import DamagedFile, WriteFailed
from imgcollapse.images import ImageSet

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    """Persist a rename: fsync the directory that holds the new name (a no-op where that is unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file of `root`'s tree, then every directory bottom-up, `root` last.

    A file's fsync does not persist its directory entry: without the directories', a power cut after the swap
    could leave `model/` without files that DONE says are there.
    """
    for folder, _, files in os.walk(root, topdown=False):
        for name in sorted(files):
            file = os.path.join(folder, name)
            if os.path.islink(file):
                continue  # the link's target is not part of this write
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # a file system that cannot
                raise
        finally:
            os.close(fd)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's renameat2 where there is one (Linux, glibc >= 2.28), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the kernel or file system cannot (NFS, Lustre...)."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


# What a write callback's non-OSError says when the disk, the file size limit or the device failed it: torch.save
# (RuntimeError from PyTorch's zip writer) and safetensors (SafetensorError wrapping Rust's io::Error).
_WRITE_FAILURE = re.compile(r"PytorchStreamWriter failed|unexpected pos \d+ vs \d+|file write failed|iostream error"
                            r"|I/O error|os error \d+")


def _as_write_error(e: BaseException) -> OSError | None:
    """The OSError behind a failed write, or None where `e` is not one (a bug in the callback stays a bug).

    An OSError anywhere in the __cause__/__context__ chain counts, and so does a RuntimeError or SafetensorError
    whose message reports a failed write (it carries the errno as "os error N" when it has one).
    """
    if not isinstance(e, Exception):
        return None  # Ctrl-C or SystemExit while handling a write error is still Ctrl-C
    chain, err = [], e
    while err is not None and all(err is not c for c in chain):
        chain.append(err)
        err = err.__cause__ or err.__context__
    for err in chain:
        if isinstance(err, OSError):
            return err
    for err in chain:
        if (isinstance(err, RuntimeError) or type(err).__name__ == "SafetensorError") and (
                _WRITE_FAILURE.search(str(err))):
            code = re.search(r"os error (\d+)", str(err))
            what = f"{type(err).__name__}: {err}"
            if code:
                return OSError(int(code.group(1)), f"{os.strerror(int(code.group(1)))} ({what})")
            return OSError(f"the write failed: disk full, file size limit or I/O error ({what})")
    return None


def _raise_as_write_failed(path: Path, e: BaseException) -> None:
    """Raise `e` as WriteFailed naming `path` if it is a failed write; return (so the caller re-raises) if not."""
    if isinstance(e, WriteFailed):
        return
    error = _as_write_error(e)
    if error is not None:
        raise WriteFailed(path, error) from e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import: os.umask can only be read by setting it


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary path beside `path`, fsync it, then rename it onto `path`.

    A failed write (an OSError, or torch's / safetensors' errors for one) removes the temporary file and is
    raised as WriteFailed naming `path`; any other exception is raised as it is.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from the rest of a group
        os.close(fd)
        tmp_path = Path(tmp)
        write(tmp_path)
        faults.reached("write", file=tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        _raise_as_write_failed(path, e)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_dir(path: Path, write: Callable[[Path], None]) -> None:
    """Fill a temporary directory beside `path` with `write(tmp)`, fsync its whole tree, then swap it in for `path`.

    Where the kernel can swap two directories atomically (renameat2 RENAME_EXCHANGE: ext4, xfs, btrfs, tmpfs) the
    old directory is at `path` until the complete new one is; elsewhere (NFS, Lustre) the old one is first renamed
    aside, so for an instant neither is at `path` but both are complete on disk. What a crash leaves aside has a
    `.<name>.<random>.tmp` name, which `RunStore.remove_temporaries` deletes. Errors as in `atomic_write`.
    """
    path = Path(path)
    tmp: Path | None = None
    old: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(0o777 & ~_UMASK)
        write(tmp)
        faults.reached("write")
        _fsync_tree(tmp)
        is_dir = path.is_dir() and not path.is_symlink()
        if is_dir and _exchange(tmp, path):
            old, tmp = tmp, None  # the old tree now has the temporary name
        else:
            if is_dir:
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
                os.replace(path, old)  # onto an empty directory: allowed, and keeps the name unique
            elif os.path.lexists(path):
                os.unlink(path)  # a file where the directory goes: nothing of a tree to keep
            os.replace(tmp, path)
            tmp = None
        _fsync_dir(path.parent)
    except BaseException as e:
        if old is not None and not os.path.lexists(path):
            with contextlib.suppress(OSError):
                os.replace(old, path)  # the new tree never made it in: put the old one back
                old = None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _raise_as_write_failed(path, e)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # a crash before this leaves it to remove_temporaries


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(obj: Any) -> str:
    """JSON with NaN/inf written as null, so every reader can parse it."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(json.loads(json.dumps(obj, default=_json_default))), indent=1)


NULL_FILE = "null.npz"  # extra samples no generation trains on: memorization's null
ENVIRONMENT_FILE = "environment.json"  # gen_XXX/: library versions and resolved settings it was made with
RESTORE = ("Restore the file from a backup, or move gen_{g:03d} and every later gen_* directory out of the run "
           "dir to redo them from generation {g}")


class RunStore:
    """Paths and state of one chain's run directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def gen_dir(self, generation: int) -> Path:
        return self.root / f"gen_{generation:03d}"

    def is_done(self, generation: int) -> bool:
        return (self.gen_dir(generation) / "DONE").exists()

    def num_done(self) -> int:
        """Length of the unbroken run of finished generations from 0: where a resumed chain starts."""
        g = 0
        while self.is_done(g):
            g += 1
        return g

    def stale_generations(self, start: int) -> list[int]:
        """Generation directories at or after `start`: unfinished, or finished but built on one that is not."""
        found = []
        for d in self.root.glob("gen_[0-9][0-9][0-9]"):
            g = int(d.name[4:])
            if g >= start:
                found.append(g)
        return sorted(found)

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files and directories (`.<name>.<random>.tmp`) that a killed writer left in the
        run dir and its generation dirs; returns them. Only safe while holding the run's lock."""
        found = []
        for folder in [self.root, *sorted(self.root.glob("gen_[0-9][0-9][0-9]"))]:
            for tmp in sorted(folder.glob(".*.tmp")):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
                found.append(tmp)
        return found

    def reset_generation(self, generation: int) -> None:
        """Remove whatever a crashed attempt at `generation` left behind."""
        shutil.rmtree(self.gen_dir(generation), ignore_errors=True)

    def mark_done(self, generation: int) -> None:
        """Write the DONE marker, the last file of a generation."""
        atomic_write_text(self.gen_dir(generation) / "DONE", "")

    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write_text(path, to_json(obj) + "\n")

    def read_json(self, path: Path, what_to_do: str = "Restore it or move the run dir away") -> Any:
        """A JSON file the run wrote; DamagedFile (naming it and `what_to_do`) if it is missing or corrupt."""
        try:
            return json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DamagedFile(path, e, what_to_do) from e

    def read_samples(self, generation: int) -> ImageSet:
        """A finished generation's samples (the next generations' data); DamagedFile if they cannot be read."""
        path = self.gen_dir(generation) / "samples.npz"
        try:
            return ImageSet.load(path)
        except Exception as e:  # missing, truncated, bit-flipped: BadZipFile, EOFError, zlib.error, ValueError...
            raise DamagedFile(path, e, f"gen_{generation:03d} is marked done, so the run dir was damaged after it "
                              f"was written. {RESTORE.format(g=generation)}") from e

    def read_null(self, generation: int) -> ImageSet | None:
        """A finished generation's null draws (memorization's reference for the generations that train on its
        samples); None for a generation written before they existed (0.2 and earlier)."""
        path = self.gen_dir(generation) / NULL_FILE
        if not path.exists():
            return None
        try:
            return ImageSet.load(path)
        except Exception as e:
            raise DamagedFile(path, e, f"gen_{generation:03d} is marked done, so the run dir was damaged after it "
                              f"was written. {RESTORE.format(g=generation)}") from e

    def rows(self) -> list[dict[str, Any]]:
        """Metric rows of the finished generations, in order; DamagedFile for one that is not a row."""
        rows = []
        for g in range(self.num_done()):
            path = self.gen_dir(g) / "metrics.json"
            row = self.read_json(path, RESTORE.format(g=g))
            if not isinstance(row, dict):
                raise DamagedFile(path, "not a metrics row (a JSON object)", RESTORE.format(g=g))
            rows.append(row)
        return rows

    def write_tables(self) -> list[dict[str, Any]]:
        """Rebuild metrics.csv and metrics.jsonl from the finished generations; returns the rows."""
        rows = self.rows()
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        atomic_write_text(self.root / "metrics.csv", csv_text(rows, columns))
        atomic_write_text(self.root / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        return rows


def csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as CSV text with a header; a missing or None value is an empty field."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buf.getvalue()


# The FAILED marker of a sweep job: written by the command line (`cli.job`) when a job fails, read by the sweep
# report and, when the sweep ends, by the command's exit status.
FAILED = "FAILED"  # in a sweep job's dir: `exit N` and why it failed (removed when the job runs again)
failed_jobs: list[tuple[str, int, str]] = []  # (job dir, exit status, reason) of this process's sweep


def write_failed(run_dir: Path, code: int, line: str) -> None:
    """The FAILED marker: `exit N` and the reason."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / FAILED, f"exit {code}\n{line}\n")


def read_failed(run_dir: Path) -> tuple[int, str] | None:
    """(exit status, reason) from a job dir's FAILED marker, or None when it has none."""
    path = Path(run_dir) / FAILED
    if not path.exists():
        return None
    first, _, reason = path.read_text().partition("\n")
    match = re.fullmatch(r"exit (\d+)", first.strip())
    return (int(match.group(1)) if match else 1), reason.strip()


def collect_failed(sweep_dir: Path) -> list[tuple[str, int, str]]:
    """Every failed job of the sweep in `sweep_dir` (any launcher: joblib and Slurm run jobs in other processes),
    kept as this process's `failed_jobs` for the command's exit status."""
    failed_jobs[:] = [(str(p.parent), *found) for p in sorted(Path(sweep_dir).glob(f"*/{FAILED}"))
                      if (found := read_failed(p.parent))]
    return failed_jobs
