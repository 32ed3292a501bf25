"""Progress where no progress bar is seen: on a non-terminal (a Slurm log, a file), training logs every 10% of a
generation's steps with the ETA of the generation and of the chain.

On a terminal tqdm draws its bar instead (models/train.py); a study logs one line for all its chains (StudyWatch).
The chain's position comes from `begin_chain` (the first and last generation this invocation trains) and
`generation_done` (each finished generation's seconds), both called by the run; the training loop calls
`Steps.update`. Nothing here changes what is computed.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("imgcollapse")

EVERY = 0.1  # log at each 10% of a generation's training steps


@dataclass
class Chain:
    first: int  # the first generation this invocation trains
    last: int  # the last generation asked for
    seconds: list[float] = field(default_factory=list)  # wall time of each generation finished since `first`

    @property
    def current(self) -> int:
        return self.first + len(self.seconds)


_chain: Chain | None = None


def begin_chain(first: int, last: int) -> None:
    """The run is about to train generations first..last."""
    global _chain
    _chain = Chain(first, last)


def generation_done(seconds: float) -> None:
    """A generation finished in `seconds` (wall time, training to DONE)."""
    if _chain is not None:
        _chain.seconds.append(float(seconds))


def is_terminal() -> bool:
    """Whether a person watches a progress bar (stderr is a terminal)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def duration(seconds: float) -> str:
    """`45 s`, `12 min`, `3.2 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Steps:
    """Training progress of one generation, logged at every 10% when no terminal shows tqdm's bar."""

    def __init__(self, total: int, desc: str, enabled: bool | None = None) -> None:
        self.total, self.desc = max(1, int(total)), desc
        self.enabled = (not is_terminal()) if enabled is None else enabled
        self.started = time.perf_counter()
        self.next = EVERY

    def update(self, done: int, loss: float | None = None) -> None:
        """`done` of `total` steps are finished."""
        if not self.enabled:
            return
        fraction = done / self.total
        if fraction + 1e-9 < self.next:
            return
        self.next = (int(fraction / EVERY + 1e-9) + 1) * EVERY
        log.info("%s", self.line(done, fraction, time.perf_counter() - self.started, loss))

    def line(self, done: int, fraction: float, elapsed: float, loss: float | None = None) -> str:
        """`gen 3/10  fit 40% (800/2000 steps, 12 s)  loss 0.0312  ETA generation 18 s, chain 4 min`."""
        left = elapsed / fraction * (1 - fraction) if fraction > 0 else 0.0
        parts = [f"{self.desc} {fraction:.0%} ({done}/{self.total} steps, {duration(elapsed)})"]
        if _chain is not None:
            parts.insert(0, f"gen {_chain.current}/{_chain.last}")
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        eta = f"ETA generation {duration(left)}"
        if _chain is not None:
            # a generation takes what the finished ones after generation 0 took on average; until one has, the
            # larger of generation 0's time and this one's projection (a generation 0 adopted from another chain
            # took seconds; one trained from scratch before fine-tunes overestimates only until the first is done)
            later = [s for i, s in enumerate(_chain.seconds) if _chain.first + i > 0]
            projected = elapsed / max(fraction, 1e-9)
            per_generation = sum(later) / len(later) if later else max([projected, *_chain.seconds])
            eta += f", chain {duration(left + per_generation * max(0, _chain.last - _chain.current))}"
        parts.append(eta)
        return "  ".join(parts)


class StudyWatch:
    """One progress line for a whole study, logged while its launcher runs: chains finished of the total,
    generations finished, time elapsed and an estimate of the time left (from this invocation's rate).

    `count()` returns (chains finished, generations finished) as the files on disk say; it is polled every `poll`
    seconds in a daemon thread and a line is logged when the count changes, at most every `every` seconds.
    """

    def __init__(self, label: str, chains: int, generations: int, count: Callable[[], tuple[int, int]],
                 every: float = 30.0, poll: float = 5.0) -> None:
        self.label, self.chains, self.generations, self.count = label, chains, generations, count
        self.every, self.poll = every, poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="study-progress", daemon=True)
        self.start_count = self.last = self._count() or (0, 0)
        self.began = time.perf_counter()

    def _count(self) -> tuple[int, int] | None:
        try:
            return self.count()
        except OSError:  # a run dir being swapped in: the next poll reads it
            return None

    def __enter__(self) -> StudyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll + 1)
        self.last = self._count() or self.last  # the final count, for the closing line

    def line(self, chains_done: int, gens_done: int, elapsed: float) -> str:
        """`study claims: 5/24 chains, 31/72 generations, 12 min elapsed, about 16 min left`."""
        new = gens_done - self.start_count[1]
        left = self.generations - gens_done
        eta = (f"about {duration(elapsed / new * left)} left" if new > 0 and left > 0
               else "time left known after the first generation" if left > 0 else "done")
        return (f"{self.label}: {chains_done}/{self.chains} chains, {gens_done}/{self.generations} generations, "
                f"{duration(elapsed)} elapsed, {eta}")

    def _loop(self) -> None:
        shown, logged = None, -math.inf
        while not self._stop.wait(self.poll):
            found = self._count()
            if found is None:
                continue
            self.last = found
            now = time.perf_counter()
            if found != shown and now - logged >= self.every:
                log.info("%s", self.line(*found, now - self.began))
                shown, logged = found, now
