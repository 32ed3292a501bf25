"""The FAILED marker of a sweep job: written by the command line (`cli.job`) when a job fails, read by the sweep
report and, when the sweep ends, by the command's exit status."""

from __future__ import annotations

import re
from pathlib import Path

from imgcollapse.store import atomic_write_text

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
