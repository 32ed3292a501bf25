"""The run directory: layout, atomic writes, completion markers and the metrics table built from them.

A generation counts only when `gen_XXX/DONE` exists. Every file is written to a temporary name in its
own directory and renamed, so a crash leaves either the old file or the new one, never half of one.
`metrics.csv` and `metrics.jsonl` are derived from the finished generations' `metrics.json`, so they
can always be rebuilt and never disagree with what is on disk.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgcollapse import faults

log = logging.getLogger(__name__)


class WriteFailed(OSError):
    """A run file could not be written (disk full, permissions, I/O error); its temporary copy is removed."""

    def __init__(self, path: Path, error: OSError) -> None:
        message = f"could not write {path}: {error.strerror or error}"
        super().__init__(*((error.errno, message) if error.errno is not None else (message,)))
        self.path = Path(path)


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import: os.umask can only be read by setting it


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary path beside `path`, fsync it, then rename it onto `path`.

    Any OSError (disk full, ...) removes the temporary file and is raised as WriteFailed naming `path`.
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
        if isinstance(e, OSError) and not isinstance(e, WriteFailed):
            raise WriteFailed(path, e) from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_dir(path: Path, write: Callable[[Path], None]) -> None:
    """Fill a temporary directory beside `path` with `write(tmp)`, fsync its files, then swap it in for `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(0o777 & ~_UMASK)
        write(tmp)
        faults.reached("write")
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, WriteFailed):
            raise WriteFailed(path, e) from e
        raise


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

    def read_json(self, path: Path) -> Any:
        return json.loads(Path(path).read_text())

    def rows(self) -> list[dict[str, Any]]:
        """Metric rows of the finished generations, in order."""
        return [self.read_json(self.gen_dir(g) / "metrics.json") for g in range(self.num_done())]

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
