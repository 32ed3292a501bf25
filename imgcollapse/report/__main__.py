"""`python -m imgcollapse.report DIR [DIR ...]`: rebuild a run's report, a sweep's or a study's from disk.

A run directory (run.json, gen_XXX/) gets its strip, GIF, curves, class plot and report.html; a multirun
directory (job subdirectories with .hydra/overrides.yaml) gets sweep.csv, sweep.png, sweep.html and every
job's own report; a study directory (study.json) gets study.csv, claims.json, its figures and
study.html. Nothing is retrained; a chain that is running or was interrupted is reported as far as
it got, with a list of what is missing. Exit status 2 if a DIR is neither.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from imgcollapse._version import version_line
from imgcollapse.errors import EXIT_DONE, EXIT_USER, EXIT_WRITE, WriteFailed, exit_codes_text
from imgcollapse.report.run_report import build_run_report, is_run_dir
from imgcollapse.report.study import build_study_report, claims_markdown, is_study_dir
from imgcollapse.report.sweep import build_sweep_report, is_sweep_dir

log = logging.getLogger("imgcollapse.report")

RUN_OUTPUTS = ("collapse_strip.png", "collapse.gif", "curves.png", "housekeeping.png", "classes.png", "real_grid.png",
               "report.html")
SWEEP_OUTPUTS = ("sweep.csv", "sweep.png", "sweep.html")


def report_run(root: Path) -> None:
    record = build_run_report(root)
    written = [name for name in RUN_OUTPUTS if (root / name).exists()]
    log.info("%s: %d finished generation(s); wrote %s", root, len(record.done), ", ".join(written))
    for line in record.missing:
        log.warning("%s: %s", root, line)


def report_sweep(root: Path, runs: bool) -> None:
    sweep = build_sweep_report(root, runs=runs)
    written = [name for name in SWEEP_OUTPUTS if (root / name).exists()]
    log.info("%s: %d job(s), swept %s, %d rows; wrote %s", root, len(sweep.jobs), ", ".join(sweep.keys) or "nothing",
             len(sweep.rows), ", ".join(written))
    for line in sweep.missing:
        log.warning("%s: %s", root, line)


def report_study(root: Path, markdown: bool = False, heading: bool = False) -> None:
    result = build_study_report(root)
    if markdown:
        print(f"### {root}\n" if heading else "", claims_markdown(result), sep="")
    log.info("%s: %s; wrote study.csv, claims.json, study.html", root,
             "; ".join(f"{name}: {c['verdict']}" for name, c in result["claims"].items()) or "no claims")
    for line in result["missing"]:
        log.warning("%s: %s", root, line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgcollapse-report", description=__doc__.split("\n")[0],
                                     epilog=exit_codes_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line("imgcollapse-report"))
    parser.add_argument("dirs", nargs="+", type=Path, help="run, multirun and/or study directories")
    parser.add_argument("--no-runs", action="store_true", help="for a sweep, leave the jobs' own reports as they are")
    parser.add_argument("--markdown", action="store_true",
                        help="for a study, also print its claims as a Markdown table (the README's) on stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    status = EXIT_DONE
    try:
        for root in args.dirs:
            status = max(status, _report(root, args))
    except WriteFailed as e:
        log.error("%s. Free space (or fix the error) and run the command again", e)
        return EXIT_WRITE
    return status


def _report(root: Path, args: argparse.Namespace) -> int:
    """Rebuild one directory's report; its exit status."""
    study = root.is_dir() and is_study_dir(root)
    if args.markdown and root.is_dir() and not study:
        log.warning("%s: --markdown prints a study's claims; this is not a study directory (study.json)", root)
    if study:
        report_study(root, markdown=args.markdown, heading=len(args.dirs) > 1)
    elif root.is_dir() and is_run_dir(root):
        report_run(root)
    elif root.is_dir() and is_sweep_dir(root):
        report_sweep(root, runs=not args.no_runs)
    else:
        log.error("%s is not a run directory (run.json, gen_XXX/), a multirun directory (job subdirectories "
                  "with .hydra/overrides.yaml) or a study directory (study.json)", root)
        return EXIT_USER
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
