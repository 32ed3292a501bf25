"""The kit's exceptions and exit codes: the bottom of the package, imported by every layer and importing none of it.

Every command maps them to the one table of exit codes, EXIT_CODES: UserError (and its kinds) 2, TrainingDiverged 3,
WriteFailed 4. Each message names what is wrong and what to do, so no traceback is ever needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EXIT_DONE, EXIT_BUG, EXIT_USER, EXIT_DIVERGED, EXIT_WRITE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
# The one table of exit codes: every command (imgcollapse, imgcollapse-study, imgcollapse-report,
# imgcollapse-calibrate) exits with one of these; --help and docs/RELIABILITY.md print it from here.
EXIT_CODES: dict[int, str] = {
    EXIT_DONE: "done, or nothing was left to do",
    EXIT_BUG: "an unexpected error (a bug): the traceback is printed; please report it",
    EXIT_USER: "a mistake in the command, the config or an input (a damaged or locked run dir, missing data): "
               "one line names it and what is allowed",
    EXIT_DIVERGED: "training diverged (a non-finite loss): lower model.lr and rerun with resume=force",
    EXIT_WRITE: "a file could not be written (disk full, permissions): free space and rerun to resume",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): finished generations are kept; rerun to resume",
}
# A -m sweep or a study exits with its first failed chain's code once every other chain has run.


def exit_codes_text(width: int = 100) -> str:
    """The exit-code table as `--help` prints it: one line per code."""
    import textwrap

    return "Exit codes:\n" + "\n".join(textwrap.fill(meaning, width, initial_indent=f"  {code:<4d}",
                                                      subsequent_indent=" " * 6)
                                        for code, meaning in EXIT_CODES.items())


def exit_codes_markdown() -> str:
    """The exit-code table as docs/RELIABILITY.md holds it (a test keeps the two equal)."""
    rows = [f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items()]
    return "\n".join(["| exit code | meaning |", "| --- | --- |", *rows])


class UserError(Exception):
    """A mistake in what the user asked for, or a damaged input: reported as one clear message, never a traceback."""


class ConfigError(UserError):
    """A config value that cannot work: names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")
        self.key = key


class DamagedFile(UserError):
    """A file the run must read is missing, truncated or corrupt: names the file and what to do."""

    def __init__(self, path: Path, error: BaseException | str, what_to_do: str) -> None:
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        super().__init__(f"{path} cannot be read ({reason}). {what_to_do}")
        self.path = Path(path)


class WriteFailed(OSError):
    """A run file could not be written (disk full, permissions, I/O error); its temporary copy is removed."""

    def __init__(self, path: Path, error: BaseException) -> None:
        errno = getattr(error, "errno", None)
        strerror = getattr(error, "strerror", None)
        message = f"could not write {path}: {strerror or error}"
        super().__init__(*((errno, message) if errno is not None else (message,)))
        self.path = Path(path)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; carries where it happened and the knob most likely to blame.

    The chain fills in `generation`; the message is built when shown, so it names it.
    """

    def __init__(self, step: int, last_finite: float | None, lr: float | None = None) -> None:
        super().__init__(step, last_finite)
        self.step = step
        self.last_finite = last_finite
        self.lr = lr
        self.generation: int | None = None

    def __str__(self) -> str:
        where = "" if self.generation is None else f"generation {self.generation}: "
        last = "none" if self.last_finite is None else f"{self.last_finite:.4g}"
        knob = "model.lr" if self.lr is None else f"model.lr, now {self.lr:g}"
        return (f"{where}loss became non-finite at step {self.step} (last finite loss {last}); lower the learning "
                f"rate ({knob}) and rerun the same command with the new value and resume=force: finished "
                "generations are kept")


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ConfigError(key, value, allowed) unless `ok`: the one-line check every component's config uses."""
    if not ok:
        raise ConfigError(key, value, allowed)
