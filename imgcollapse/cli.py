"""The command line around Hydra: `imgcollapse OVERRIDES` (the same as `python -m imgcollapse.run OVERRIDES`).

Hydra reports its own composition errors (an unknown key, a wrong type, an unknown group choice) with exit
status 1 and several lines of its text; here each becomes one line naming the key and the closest valid name,
with exit status 2 like every other user mistake. One job of a `-m` sweep that fails does not stop the sweep:
`job` logs the reason, leaves `FAILED` (the reason) in the job's dir for the sweep report, and the command
exits non-zero once every job has run. Ctrl-C exits 130 with one line saying what was kept.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from imgcollapse._version import version_line
from imgcollapse.config import did_you_mean, register, user_groups
from imgcollapse.errors import (
    EXIT_BUG,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_USER,
    EXIT_WRITE,
    TrainingDiverged,
    UserError,
    WriteFailed,
)
from imgcollapse.store import FAILED, failed_jobs, write_failed

log = logging.getLogger("imgcollapse")

_interrupt_reported = False


# Exit codes --------------------------------------------------------------------------------------
def exit_status(error: BaseException) -> tuple[int, str]:
    """(exit status, one line) for an error a chain can end with; status 1 for an unexpected one (a bug)."""
    if isinstance(error, UserError):
        return EXIT_USER, str(error)
    if isinstance(error, MissingMandatoryValue):  # a key the YAML leaves for the user (dataset.root of folder)
        return EXIT_USER, f"{error.full_key} has no value: set it on the command line ({error.full_key}=...)"
    if isinstance(error, OmegaConfBaseException):
        return EXIT_USER, describe_config_error(error)
    if isinstance(error, TrainingDiverged):
        return EXIT_DIVERGED, f"training diverged: {error}"
    if isinstance(error, WriteFailed):  # disk full, quota, I/O error: the generation being written is not done
        return EXIT_WRITE, (f"{error}. Finished generations are kept; free space (or fix the error) and rerun the "
                            "same command to resume")
    return EXIT_BUG, f"{type(error).__name__}: {error}"


def job(cfg: DictConfig, run: Callable[[DictConfig, Path], Any]) -> int:
    """The body of the Hydra task: `run(cfg, run_dir)`, its errors mapped to exit codes. A single run exits with
    the code; a job of a `-m` sweep logs why it failed, writes FAILED in its dir and returns the code, so the
    sweep goes on."""
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    sweep = hydra.mode == RunMode.MULTIRUN
    (run_dir / FAILED).unlink(missing_ok=True)  # a rerun of the sweep starts the job afresh
    try:
        run(cfg, run_dir)
        return 0
    except KeyboardInterrupt:
        report_interrupt(run_dir)
        raise
    except Exception as e:
        code, line = exit_status(e)
        if not sweep:
            if code == EXIT_BUG:
                raise  # a bug: Hydra prints the traceback
            log.error("%s", line)
            sys.exit(code)
        if code == EXIT_BUG:
            log.error("job %s failed:\n%s", run_dir.name, traceback.format_exc())
        else:
            log.error("job %s failed: %s", run_dir.name, line)
        write_failed(run_dir, code, line)
        failed_jobs.append((str(run_dir), code, line))
        return code


def report_interrupt(run_dir: Path | None) -> None:
    """One line: what Ctrl-C kept, and how to go on."""
    global _interrupt_reported
    if _interrupt_reported:
        return
    _interrupt_reported = True
    if run_dir is None:  # before a chain started, or in the process that launched a sweep's jobs
        log.error("interrupted: every generation that finished is kept in its run dir; rerun the same command to "
                  "resume")
        return
    done = sorted(p.parent.name for p in run_dir.glob("gen_*/DONE"))
    kept = (f"generations 0..{len(done) - 1} are finished and kept in {run_dir}" if done
            else f"no generation had finished in {run_dir}")
    log.error("interrupted: %s; the generation in progress is discarded. Rerun the same command to resume", kept)


# Hydra's composition errors -------------------------------------------------------------------------
def describe_config_error(error: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised composing the config: the key, the closest valid name."""
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(error, MissingConfigException):
        found = re.search(r"Could not find '([^']+)'", str(error))
        wanted = found.group(1) if found else str(error).splitlines()[0]
        group, _, name = wanted.rpartition("/")
        options = list(getattr(error, "options", None) or [])
        if group and options:
            return (f"{group}={name} is not a {group} option{did_you_mean(name, options)}; "
                    f"one of: {', '.join(options)}")
        return f"config {wanted!r} not found (check the override's group and name)"
    if isinstance(error, OverrideParseException):
        return f"cannot parse the command line: {str(error).splitlines()[0]} (overrides are KEY=VALUE)"
    if isinstance(cause, ConfigKeyError) or "not in struct" in str(cause) or "not in '" in str(cause):
        key = getattr(cause, "full_key", None) or getattr(cause, "key", None) or "?"
        parent = getattr(cause, "parent_node", None)
        options = [str(k) for k in parent if str(k) != "hydra"] if parent is not None else []
        where = key.rpartition(".")[0]
        override = re.search(r"use \+(\S+)", str(error))  # Hydra's hint repeats the override as typed
        return ((f"{override.group(1)}: " if override else "")
                + f"unknown key '{key}'{did_you_mean(str(key).rpartition('.')[2], options)}; "
                + (f"{where or 'the config'} has: {', '.join(options)}" if options else "see imgcollapse --cfg job"))
    if isinstance(cause, ValidationError):
        value = re.search(r"Value '([^']*)'", str(cause))
        return f"{cause.full_key}={value.group(1) if value else '?'}: {str(cause).splitlines()[0]}"
    group = re.search(r"Could not override '([^']+)'. No match in the defaults list", str(error))
    if group:
        return (f"unknown config group '{group.group(1)}'{did_you_mean(group.group(1), user_groups())}; "
                f"groups: {', '.join(user_groups())}")
    first = str(error).strip().splitlines()
    detail = str(cause).strip().splitlines() if cause is not error else []
    return "; ".join([*(first[:1] or [type(error).__name__]), *detail[:1]])


# The entry point ---------------------------------------------------------------------------------
def main(hydra_main: Callable[[], Any], command: str = "imgcollapse") -> None:
    """Run a `@hydra.main` function as the kit's command: exit 2 with one line for a composition error, 130 on
    Ctrl-C, and after a sweep the first failed job's status (errors.EXIT_CODES). `--version` prints the kit's."""
    if "--version" in sys.argv[1:]:  # Hydra's own --version would print Hydra's
        print(version_line(command))
        sys.exit(0)
    register()  # the schemas and resolvers (--help's list of groups among them)
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing and exiting 1: mapped below
    failed_jobs.clear()
    try:
        hydra_main()
    except KeyboardInterrupt:
        report_interrupt(None)
        sys.exit(EXIT_INTERRUPTED)
    except (HydraException, OmegaConfBaseException) as e:
        if full_error:
            traceback.print_exc()
        _die(EXIT_USER, describe_config_error(e))
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
    if failed_jobs:
        code = failed_jobs[0][1]
        _die(code, f"{len(failed_jobs)} job(s) of the sweep failed (each job dir has a FAILED file; "
                   f"sweep.html lists them): " + "; ".join(f"{Path(d).name}: {r}" for d, _, r in failed_jobs))


def _die(code: int, line: str) -> NoReturn:
    if logging.getLogger().handlers:
        log.error("%s", line)
    else:  # Hydra had not configured logging yet (it failed composing)
        print(f"error: {line}", file=sys.stderr)
    sys.exit(code)
