"""Aggregate a multirun directory: `sweep.csv`, `sweep.png` (mean and 95% interval across seeds) and `sweep.html`.

A job is a subdirectory with `.hydra/overrides.yaml` (Hydra writes it for every job of a `-m` sweep).
The swept keys are the overrides whose value differs between jobs; every value of the swept keys other
than `seed` is one line in `sweep.png`, averaged over the seeds that share it. Jobs that are still
running or were interrupted contribute the generations they finished; jobs that failed (a `FAILED` file in
their dir, written by `imgcollapse.cli.job`) are listed with their reason.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from imgcollapse.report import page
from imgcollapse.report.metric_info import is_housekeeping
from imgcollapse.report.plots import is_companion, numeric_columns, save_figure, save_paper_figures, sweep_figure
from imgcollapse.report.run_report import build_run_report, is_run_dir
from imgcollapse.store import atomic_write_text, collect_failed, csv_text, read_failed

log = logging.getLogger(__name__)

SEED_KEY = "seed"  # the key averaged over; every other swept key separates lines
# per-class and per-source columns: too many lines for a sweep
SKIP_PREFIXES = ("class_freq_", "share_gen_", "recall_class_", "coverage_class_")


@dataclass
class Job:
    name: str
    root: Path
    overrides: dict[str, str]
    rows: list[dict[str, Any]]  # metrics.csv rows as text, generation as int
    failed: str | None = None  # the reason in the job's FAILED file; None: not failed


@dataclass
class Sweep:
    root: Path
    jobs: list[Job]
    keys: list[str]  # swept keys: overrides that differ between jobs
    fixed: dict[str, str]  # overrides shared by every job
    columns: list[str]  # sweep.csv columns: job, swept keys, metric columns
    rows: list[dict[str, Any]]  # one per job × finished generation
    missing: list[str] = field(default_factory=list)


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """`key=value` overrides as a dict; Hydra's own (`hydra.*`, `hydra/...`) are left out."""
    out = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        key = key.lstrip("+~")
        if key.startswith(("hydra.", "hydra/")) or key == "hydra":
            continue
        out[key] = value
    return out


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.csv as written (text, so sweep.csv repeats them exactly), `generation` as int."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["generation"] = int(row["generation"])
    return rows


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _job_order(path: Path) -> tuple[int, str]:
    m = re.match(r"(\d+)_", path.name)
    return (int(m.group(1)) if m else 1 << 30, path.name)


def _job_override_files(root: Path) -> list[Path]:
    """`.hydra/overrides.yaml` of every job directory up to two levels below `root`."""
    return [*Path(root).glob("*/.hydra/overrides.yaml"), *Path(root).glob("*/*/.hydra/overrides.yaml")]


def find_jobs(root: Path) -> list[Job]:
    """Every job directory (one with `.hydra/overrides.yaml`) up to two levels below `root`, with its rows."""
    paths = _job_override_files(root)
    jobs = []
    for path in sorted(paths, key=lambda p: _job_order(p.parent.parent)):
        job_dir = path.parent.parent
        metrics = job_dir / "metrics.csv"
        rows = read_metrics_csv(metrics) if metrics.exists() else []
        name = job_dir.relative_to(root).as_posix()
        failed = read_failed(job_dir)
        jobs.append(Job(name, job_dir, parse_overrides(yaml.safe_load(path.read_text()) or []), rows,
                        failed=f"exit {failed[0]}: {failed[1]}" if failed else None))
    return jobs


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / "multirun.yaml").exists() or bool(_job_override_files(path))  # no job read yet


def collect(root: Path) -> Sweep:
    """Read every job of the sweep in `root` into one table (one row per job × generation)."""
    root = Path(root)
    jobs = find_jobs(root)
    all_keys: list[str] = []
    for job in jobs:
        all_keys += [k for k in job.overrides if k not in all_keys]
    keys = [k for k in all_keys if len({job.overrides.get(k, "") for job in jobs}) > 1]
    fixed = {k: jobs[0].overrides[k] for k in all_keys if k not in keys} if jobs else {}
    metric_columns: list[str] = []
    rows = []
    missing = [f"{job.name}: FAILED ({job.failed})" for job in jobs if job.failed]
    missing += [f"{job.name}: no finished generation yet" for job in jobs if not job.rows and not job.failed]
    for job in jobs:
        for row in job.rows:
            metric_columns += [k for k in row if k not in metric_columns and k not in keys]
            rows.append({"job": job.name, **{k: job.overrides.get(k, "") for k in keys}, **row})
    columns = ["job", *keys, *metric_columns]
    return Sweep(root, jobs, keys, fixed, columns, rows, missing)


def group_label(values: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "all jobs"


def plot_columns(sweep: Sweep) -> list[str]:
    """The metric columns drawn in sweep.png: numeric, not a swept key, not a per-class/per-source family, not
    housekeeping (times, sizes: in sweep.csv), not a chain's own interval or spread (the band is across seeds)."""
    skip = ("job", "generation", *sweep.keys)
    columns = numeric_columns(sweep.rows, skip=skip)
    return [c for c in columns if not c.startswith(SKIP_PREFIXES) and not is_housekeeping(c)
            and not is_companion(c, columns)]


def bands(sweep: Sweep, metrics: Sequence[str]) -> dict[str, dict[str, tuple[np.ndarray, ...]]]:
    """`bands[metric][group] = (generations, mean, std, n)` across the seeds of each group.

    std is the sample standard deviation (ddof=1) across seeds; 0 where a generation has one seed.
    """
    group_keys = [k for k in sweep.keys if k != SEED_KEY]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in sweep.rows:
        groups.setdefault(group_label({k: row[k] for k in group_keys}), []).append(row)
    out: dict[str, dict[str, tuple[np.ndarray, ...]]] = {}
    for metric in metrics:
        out[metric] = {}
        for label, rows in groups.items():
            gens, means, stds, counts = [], [], [], []
            for g in sorted({r["generation"] for r in rows}):
                values = np.array([v for r in rows if r["generation"] == g
                                   and (v := _finite(r.get(metric))) is not None])
                if len(values):
                    gens.append(g)
                    means.append(values.mean())
                    stds.append(values.std(ddof=1) if len(values) > 1 else 0.0)
                    counts.append(len(values))
            if gens:
                out[metric][label] = tuple(np.array(a) for a in (gens, means, stds, counts))
    return out


def interval(std: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Half-width of the 95% t-interval of a mean over `n` seeds with sample std `std` (0 where n is 1)."""
    from scipy import stats

    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * np.asarray(std) / np.sqrt(n)
    return np.where(n > 1, half, 0.0)


def _last_generation_table(sweep: Sweep, metric_bands: dict[str, dict[str, tuple[np.ndarray, ...]]]) -> str:
    labels = list(next(iter(metric_bands.values()), {}))
    rows = []
    for label in labels:
        row: dict[str, Any] = {"group": label}
        for metric, by_group in metric_bands.items():
            if label in by_group:
                g, mean, std, n = by_group[label]
                row.setdefault("generation", int(g[-1]))
                row.setdefault("seeds", int(n[-1]))
                half = interval(std[-1:], n[-1:])[0]
                row[metric] = f"{page.format_value(mean[-1])} ± {page.format_value(half) or '0'}"
        rows.append(row)
    return page.table(["group", "generation", "seeds", *metric_bands], rows)


def _html(sweep: Sweep, figure: Path | None, metric_bands: dict) -> str:
    facts = [f"{len(sweep.jobs)} job(s); swept: {', '.join(sweep.keys) or 'nothing'}; "
             f"lines average over `{SEED_KEY}`; bands and ± are 95% t-intervals of the mean across seeds (n seeds "
             "shown; none where n = 1)"]
    if sweep.fixed:
        facts.append("shared overrides: " + " ".join(f"{k}={v}" for k, v in sweep.fixed.items()))
    intro = page.bullet_list(facts) + page.bullet_list(sweep.missing, "missing")
    job_rows = []
    for job in sweep.jobs:
        report = job.root / "report.html"
        link = f'<a href="{page.esc(job.name)}/report.html">report.html</a>' if report.exists() else ""
        job_rows.append({"job": job.name, **{k: job.overrides.get(k, "") for k in sweep.keys},
                         "generations": len(job.rows), "report": link, "failed": job.failed or ""})
    jobs_table = page.table(["job", *sweep.keys, "generations", "report", "failed"], job_rows, raw=("report",))
    sections = [
        ("Metrics by generation", page.embedded_image(figure, "sweep.png") if figure else ""),
        ("Last generation of each group (mean ± 95% interval across seeds)",
         _last_generation_table(sweep, metric_bands) if metric_bands else ""),
        ("Jobs", jobs_table),
    ]
    return page.document(f"imgcollapse sweep: {sweep.root.name}", sections, intro)


def build_sweep_report(root: Path, runs: bool = True) -> Sweep:
    """Write sweep.csv, sweep.png (and vector sweep.pdf/.svg, one and two columns wide) and sweep.html in the multirun
    dir `root` (and each job's report if `runs`)."""
    root = Path(root)
    if runs:
        for job in find_jobs(root):
            if is_run_dir(job.root):
                build_run_report(job.root)
    sweep = collect(root)
    atomic_write_text(root / "sweep.csv", csv_text(sweep.rows, sweep.columns))
    metric_bands = bands(sweep, plot_columns(sweep))
    figure = None
    if any(metric_bands.values()):
        figure = root / "sweep.png"
        drawable = {m: {label: (g, mean, interval(std, n), n) for label, (g, mean, std, n) in by_group.items()}
                    for m, by_group in metric_bands.items() if by_group}
        save_figure(sweep_figure(drawable), figure)
        save_paper_figures(lambda width: sweep_figure(drawable, width=width), root / "sweep")
    atomic_write_text(root / "sweep.html", _html(sweep, figure, metric_bands))
    return sweep


class SweepReport(Callback):
    """Hydra callback: when a `-m` sweep ends, aggregate its jobs (each job already wrote its own report)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(str(config.hydra.sweep.dir))
        collect_failed(root)  # the command's exit status, whichever launcher ran the jobs
        try:
            sweep = build_sweep_report(root, runs=False)
        except Exception as e:  # the sweep's results are on disk either way; the report can be rebuilt
            log.warning("sweep report failed (%s); rebuild it with: python -m imgcollapse.report %s", e, root)
            return
        log.info("sweep report: %s (%d jobs)", root / "sweep.html", len(sweep.jobs))
