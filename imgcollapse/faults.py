"""Fault injection for the resume tests: SIGKILL this process at a named point of a run.

`IMGCOLLAPSE_FAULT=<point>[:<n>]` kills the process (SIGKILL: no cleanup, no `finally`) the n-th time it
reaches `point` (default: the first time). `run.run` reads the variable once, when a run starts, and arms
this module; the chain and its helpers call `reached(point)` at the places listed in POINTS. Unarmed, a
call is one comparison.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from imgcollapse.errors import ConfigError

log = logging.getLogger("imgcollapse")

ENV = "IMGCOLLAPSE_FAULT"
POINTS = {
    "train_step": "after an optimizer step (n counts the steps of every generation this process trains)",
    "sample": "after a batch of samples (the strip's batch counts too)",
    "metrics": "while scoring a generation, after one feature space's features",
    "write": "in the middle of writing a file: its temporary copy cut to half, before the rename",
    "before_done": "after a generation's files are written, before its DONE marker",
    "after_done": "after a generation's DONE marker, before metrics.csv and metrics.jsonl are rebuilt",
}


@dataclass
class _Fault:
    point: str
    n: int
    count: int = 0


_armed: _Fault | None = None


def parse(spec: str) -> tuple[str, int]:
    """`point[:n]` as (point, n); a bad spec is a ConfigError naming the variable."""
    point, _, n = spec.partition(":")
    if point not in POINTS or (n and not (n.isdigit() and int(n) >= 1)):
        raise ConfigError(ENV, spec, f"<point>[:<n>] with point one of {list(POINTS)} and n an integer ≥ 1")
    return point, int(n or 1)


def arm(spec: str | None) -> None:
    """Kill this process at `spec` (`point[:n]`), warning loudly; None or '' disarms."""
    global _armed
    _armed = _Fault(*parse(spec)) if spec else None
    if _armed is not None:  # a variable left set in a shell would otherwise kill every rerun without a word
        log.warning("fault injection armed: %s=%s will SIGKILL this process at '%s' (hit #%d: %s); unset it for a "
                    "normal run", ENV, spec, _armed.point, _armed.n, POINTS[_armed.point])


def reached(point: str, file: Path | None = None) -> None:
    """Mark that the run is at `point`; SIGKILL the process if this is the armed hit.

    `file`: a file being written, cut to half its length first, as a write stopped midway would leave it.
    """
    fault = _armed
    if fault is None or fault.point != point:
        return
    fault.count += 1
    if fault.count == fault.n:
        if file is not None and Path(file).is_file():
            os.truncate(file, Path(file).stat().st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
