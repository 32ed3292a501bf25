"""One run's report, rebuilt from the files on disk: strip, GIF, curves, class plot and report.html.

It reads only what the chain leaves (`gen_XXX/` with DONE, samples, strip samples, grid, metrics.json;
`run.json`; `.hydra/`), so it works on a finished, running or interrupted chain and says what is missing.
The chain calls it after every generation and once at the end; `python -m imgcollapse.report RUN_DIR`
calls it by hand.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from imgcollapse.data import ImageSet
from imgcollapse.report import header, metric_info, page
from imgcollapse.report.figures import grid_image, save_gif, save_png, strip_image
from imgcollapse.report.plots import (
    CLASS_FREQ_PREFIX,
    PER_CLASS_PREFIXES,
    calibration_figure,
    classes_figure,
    curves_figure,
    families_in_turn,
    is_companion,
    numeric_columns,
    save_figure,
)
from imgcollapse.store import atomic_write_text

log = logging.getLogger(__name__)

GEN_DIR = re.compile(r"gen_(\d{3,})$")
GEN_FILES = ("metrics.json", "samples.npz", "strip.npz", "grid.png")  # what a finished generation holds
DEFAULT_GRID_SIZE = 64


@dataclass
class RunRecord:
    """What a run directory holds right now."""

    root: Path
    meta: dict[str, Any]  # run.json ({} if absent)
    config: dict[str, Any]  # the run's config (run.json's resolved copy, else .hydra/config.yaml)
    target: int | None  # the last generation the latest command asked for
    done: list[int]  # generations with a DONE marker
    rows: list[dict[str, Any]]  # metrics.json of the done generations, in order
    missing: list[str] = field(default_factory=list)  # one line per thing the report could not find

    @property
    def complete(self) -> bool:
        return not self.missing and self.target is not None and self.done == list(range(self.target + 1))


def is_run_dir(path: Path) -> bool:
    """A chain's run directory: it has run.json or generation directories."""
    path = Path(path)
    return (path / "run.json").exists() or any(GEN_DIR.match(p.name) for p in path.glob("gen_*"))


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.exists() else None


def _span(numbers: list[int]) -> str:
    return f"gen_{numbers[0]:03d}" if len(numbers) == 1 else f"gen_{numbers[0]:03d}..gen_{numbers[-1]:03d}"


def read_run(root: Path) -> RunRecord:
    """Inventory a run directory: finished generations, their metric rows, and what is missing."""
    root = Path(root)
    meta = json.loads((root / "run.json").read_text()) if (root / "run.json").exists() else {}
    hydra_config = _load_yaml(root / ".hydra" / "config.yaml") or {}
    config = meta.get("config") or hydra_config
    target = hydra_config.get("generation", config.get("generation"))  # .hydra is rewritten by every command
    missing = [] if meta else ["run.json (config, class names, real-data references)"]

    found = sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := GEN_DIR.match(p.name)))
    done = [g for g in found if (root / f"gen_{g:03d}" / "DONE").exists()]
    rows = []
    for g in done:
        gen_dir = root / f"gen_{g:03d}"
        absent = [name for name in GEN_FILES if not (gen_dir / name).exists()]
        if absent:
            missing.append(f"gen_{g:03d}: {', '.join(absent)} missing")
        if (gen_dir / "metrics.json").exists():
            rows.append(json.loads((gen_dir / "metrics.json").read_text()))

    last = max([*found, target if isinstance(target, int) else -1])
    pending: list[int] = []
    for g in range(last + 1):
        if g in done:
            continue
        if g in found:
            missing.append(f"gen_{g:03d}: unfinished (no DONE marker: still running, or interrupted)")
        elif done and g < done[-1]:
            missing.append(f"gen_{g:03d}: missing")
        else:
            pending.append(g)
    if pending:
        missing.append(f"{_span(pending)}: not trained yet (the chain asks for generations 0..{target})")
    return RunRecord(root, meta, config, target if isinstance(target, int) else None, done, rows, missing)


def _real_frequencies(dataset: dict[str, Any]) -> list[float] | None:
    """Class shares of the real training pool, from run.json's `dataset.class_counts.train`."""
    counts = (dataset.get("class_counts") or {}).get("train")
    if not counts or not sum(counts):
        return None
    return [c / sum(counts) for c in counts]


def class_frequencies(record: RunRecord) -> tuple[list[str], list[float] | None, list[int], np.ndarray, str] | None:
    """(class names, real frequencies or None, generations, generations × classes sample frequencies, source).

    Frequencies come from the `class_freq_<name>` metric columns when the metrics provide them, else from
    the labels stored with each generation's samples (for unconditional models: the classifier's predictions).
    """
    dataset = record.meta.get("dataset", {})
    names = dataset.get("class_names")
    real = _real_frequencies(dataset)
    freq_columns = [c for c in (record.rows[0] if record.rows else {}) if c.startswith(CLASS_FREQ_PREFIX)]
    if freq_columns:
        names = names or [c[len(CLASS_FREQ_PREFIX):] for c in freq_columns]
        by_name = {c[len(CLASS_FREQ_PREFIX):]: c for c in freq_columns}
        if all(str(n) in by_name for n in names):
            table = [[float(row.get(by_name[str(n)]) or 0.0) for n in names] for row in record.rows]
            gens = [int(row["generation"]) for row in record.rows]
            return names, real, gens, np.array(table), "the metrics' class_freq_* columns"
    gens, table = [], []
    for g in record.done:
        path = record.root / f"gen_{g:03d}" / "samples.npz"
        if not path.exists():
            continue
        samples = ImageSet.load(path)
        if samples.labels is None:
            continue
        names = names or samples.class_names
        if names is None:
            continue
        counts = torch.bincount(samples.labels, minlength=len(names)).double()
        gens.append(g)
        table.append((counts / counts.sum()).tolist())
    if not table or names is None:
        return None
    return names, real, gens, np.array(table), "the labels stored with each generation's samples"


def _grid_size(config: dict[str, Any]) -> int:
    return int((config.get("report") or {}).get("grid_size") or DEFAULT_GRID_SIZE)


def _rebuild_missing_grids(record: RunRecord) -> None:
    for g in record.done:
        gen_dir = record.root / f"gen_{g:03d}"
        if not (gen_dir / "grid.png").exists() and (gen_dir / "samples.npz").exists():
            images = ImageSet.load(gen_dir / "samples.npz").images[: _grid_size(record.config)]
            save_png(grid_image(images, title=f"generation {g}"), gen_dir / "grid.png")
            log.info("rebuilt gen_%03d/grid.png from its samples", g)


def _strip(record: RunRecord) -> Path | None:
    rows: list[tuple[int, torch.Tensor | None]] = []
    for g in range(record.done[-1] + 1):
        path = record.root / f"gen_{g:03d}" / "strip.npz"
        rows.append((g, ImageSet.load(path).images if g in record.done and path.exists() else None))
    if all(images is None for _, images in rows):
        return None
    out = record.root / "collapse_strip.png"
    save_png(strip_image(rows, title="same noise per column"), out)
    return out


def _gif(record: RunRecord) -> Path | None:
    frames = []
    for g in record.done:
        path = record.root / f"gen_{g:03d}" / "grid.png"
        if path.exists():
            with Image.open(path) as im:
                frames.append(im.convert("RGB"))
    if not frames:
        return None
    out = record.root / "collapse.gif"
    save_gif(frames, out)
    return out


def real_floor(record: RunRecord) -> dict[str, Any]:
    """The real floor's scores (two real sets the metrics classifier never saw, at the rows' size, with their
    intervals) from run.json, and the class statistics of the real frequencies where it has no score of its own;
    runs from before 0.3 recorded only its FID."""
    return metric_info.real_values(record.meta)


def population_members(record: RunRecord) -> list[str]:
    """The member names of a population chain (chain.population), whose own scores are `<metric>_<member>`."""
    return [str(m) for m in ((record.config.get("chain") or {}).get("population") or [])]


def curves_caption(record: RunRecord) -> str:
    """CURVES_CAPTION, plus how the panels show a population's members or the families that take turns."""
    caption = CURVES_CAPTION
    members = population_members(record)
    if members:
        caption += (" Population: the solid line scores the pooled samples, each dash-dotted line one member on its "
                    f"own samples ({', '.join(members)}; legend in the first such panel).")
    families = families_in_turn(record.rows)
    if families:
        caption += (" Families in turn: each point's marker says which family trained that generation "
                    f"({', '.join(families)}; legend in the first panel).")
    return caption


def _curves(record: RunRecord, housekeeping: bool = False) -> Path | None:
    """curves.png: the metrics, each with its real-data line where run.json has one; housekeeping.png (with
    `housekeeping`): timings, training-set sizes and sources, the training loss."""
    if not record.rows:
        return None
    out = record.root / ("housekeeping.png" if housekeeping else "curves.png")
    columns = [c for c in numeric_columns(record.rows) if metric_info.is_housekeeping(c) == housekeeping]
    if not columns:
        return None
    try:
        save_figure(curves_figure(record.rows, metric_info.real_values(record.meta), columns=columns,
                                  members=population_members(record)), out)
    except ValueError:  # no numeric column yet
        return None
    return out


def _classes(record: RunRecord) -> tuple[Path | None, str]:
    found = class_frequencies(record)
    if found is None:
        return None, "no class labels in this run: classes.png is not drawn"
    names, real, gens, table, source = found
    out = record.root / "classes.png"
    save_figure(classes_figure(names, real, gens, table), out)
    note = f"class frequencies from {source}"
    if real is None:
        note += "; run.json has no real class counts (dataset.class_counts), so no real column"
    return out, note


CURVES_CAPTION = ("Each panel: ↓ lower is better, ↑ higher is better, 'best ≈1' closest to 1; the y axis names the "
                  "feature space (or the classifier's predicted classes). Bands: 95% intervals (bootstrap over the "
                  "scored samples); dashed: the generation-0 value; dotted green: the real floor (two real sets the "
                  "metrics classifier never saw, at the rows' size). Bounded scores span their whole range.")


def _last_done(record: RunRecord) -> str | None:
    if not record.done:
        return None
    done = record.root / f"gen_{record.done[-1]:03d}" / "DONE"
    stamp = datetime.datetime.fromtimestamp(done.stat().st_mtime) if done.exists() else None
    return stamp.isoformat(timespec="seconds") if stamp else None



CALIBRATION_FILE = "calibration.json"


def _calibration(record: RunRecord) -> tuple[Path | None, dict[str, Any] | None]:
    """calibration.png drawn from the run's calibration.json (written when the run started), if it has one."""
    path = record.root / CALIBRATION_FILE
    if not path.exists():
        return None, None
    try:
        result = json.loads(path.read_text())
    except ValueError as e:
        log.warning("%s cannot be read (%s): no calibration in the report", path, e)
        return None, None
    out = record.root / "calibration.png"
    save_figure(calibration_figure(result), out)
    return out, result


def _cell(row: dict[str, Any], column: str) -> str:
    """A value with its 95% interval beneath it, when it has one."""
    value = page.format_value(row.get(column))
    lo, hi = row.get(f"{column}_lo"), row.get(f"{column}_hi")
    if value and lo is not None and hi is not None and page.format_value(lo) and page.format_value(hi):
        value += f'<br><span class="ci">[{page.format_value(lo)}, {page.format_value(hi)}]</span>'
    return value


def metric_table(record: RunRecord, sees: dict[str, list[str]] | None) -> str:
    """One column per metric (intervals beneath the values, spreads and per-class scores left to metrics.csv),
    the real floor as the first row and, with a calibration, which changes each metric sees as the last."""
    columns: list[str] = []
    for row in record.rows:
        columns += [k for k in row if k not in columns]
    shown = [c for c in columns if not (is_companion(c, columns) or metric_info.is_housekeeping(c)
                                        or c.startswith((CLASS_FREQ_PREFIX, *PER_CLASS_PREFIXES)))]
    floor = real_floor(record)
    rows = []
    if floor:
        rows.append({"generation": "real floor", **{c: _cell(floor, c) for c in shown if c in floor}})
    rows += [{"generation": page.esc(row.get("generation")), **{c: _cell(row, c) for c in shown if c != "generation"}}
             for row in record.rows]  # (as text: a raw cell of 0 would print as empty)
    if sees is not None:
        rows.append({"generation": "sees (calibration)",
                     **{c: page.esc(", ".join(sees[c]) or "none") for c in shown if c in sees}})
    return page.table(shown, rows, raw=shown)


def per_class_table(record: RunRecord) -> str:
    """Recall and coverage of each class (its held-out images against the samples assigned to it): the real
    floor, generation 0 and the last generation."""
    if not record.rows:
        return ""
    names = [k[len("recall_class_"):] for k in record.rows[-1] if k.startswith("recall_class_")
             and not is_companion(k, list(record.rows[-1]))]
    if not names:
        return ""
    floor, first, last = real_floor(record), record.rows[0], record.rows[-1]
    sources = [("real floor", floor), (f"gen {first.get('generation')}", first),
               (f"gen {last.get('generation')}", last)]
    columns = ["class"] + [f"{score} {label}" for score in ("recall", "coverage") for label, _ in sources]
    rows = [{"class": page.esc(name), **{f"{score} {label}": _cell(src, f"{score}_class_{name}")
                                         for score in ("recall", "coverage") for label, src in sources}}
            for name in names]
    return page.table(columns, rows, raw=columns)


def _html(record: RunRecord, figures: dict[str, Path | None], class_note: str,
          calibration: dict[str, Any] | None = None) -> str:
    m, d = record.meta, record.meta.get("dataset", {})
    status = ("complete" if record.complete else "incomplete") + f": {len(record.done)} finished generation(s)"
    if record.target is not None:
        status += f" of 0..{record.target}"
    facts = [status]
    if d:
        facts.append(f"dataset: {d.get('num_train')} training images, {d.get('num_heldout')} held out, "
                     f"shape {d.get('image_shape')}")
    if m.get("classifier_accuracy") is not None:
        size = (m.get("metrics") or {}).get("equal_size")
        seen = f" (two real sets of {size} it never saw; samples are scored at the same size)" if size else ""
        facts.append(f"metrics classifier held-out accuracy {m['classifier_accuracy']:.3f}; real floor FID "
                     f"{m.get('fid_real', float('nan')):.2f}{seen}")
    intro = (header.header_html(record.root, m, _last_done(record)) + page.bullet_list(facts)
             + page.bullet_list(record.missing, "missing"))

    def figure(name: str, caption: str) -> str:
        path = figures.get(name)
        return f"<p>{page.esc(caption)}</p>{page.embedded_image(path, name)}" if path else ""

    columns: list[str] = []
    for row in record.rows:
        columns += [k for k in row if k not in columns]
    housekeeping_columns = ["generation", *(c for c in columns if metric_info.is_housekeeping(c))]
    spaces = metric_info.legend(columns)
    table_note = ("<p>Each value with its 95% interval beneath. First row: the real floor, two real sets the "
                  "metrics classifier never saw, scored at the size the rows use (for class statistics without "
                  "one, the real class frequencies themselves); last row: which of the calibration's controlled "
                  "changes each metric sees on this dataset. ↓ lower is better, ↑ higher is better"
                  + (f"; feature spaces: {page.esc('; '.join(spaces))}" if spaces else "") + ".</p>")
    grids = "".join(page.embedded_image(record.root / f"gen_{g:03d}" / "grid.png", f"generation {g}")
                    for g in record.done if (record.root / f"gen_{g:03d}" / "grid.png").exists())
    first_grid = record.root / "gen_000" / "grid.png"
    real_beside = ""
    if figures.get(header.REAL_GRID) and first_grid.exists() and 0 in record.done:
        real_beside = ('<div class="grids">' + page.embedded_image(figures[header.REAL_GRID], "real images")
                       + page.embedded_image(first_grid, "generation 0") + "</div>")
    config_text, config_source = header.resolved_config_text(record.root, m)
    sections = [
        ("Collapse strip", figure("collapse_strip.png", "Rows are generations; each column starts every "
                                  "generation from the same noise, so a column shows one sample drifting.")),
        ("Real images beside generation 0", real_beside),
        ("Metrics by generation", figure("curves.png", curves_caption(record))),
        ("Classes", figure("classes.png", class_note)),
        ("Samples across generations", figure("collapse.gif", "The sample grid of each generation, animated.")),
        ("Metric table", table_note + metric_table(record, (calibration or {}).get("sees")) if record.rows else ""),
        ("Per-class recall and coverage", per_class_table(record)),
        ("Calibration: which metric sees which change", figure(
            "calibration.png", "Graded changes applied to real images no model or classifier trained on; each "
            "cell is the response at the strongest change in noise sd toward worse, ✓ where the metric sees it "
            "(monotone, beyond 2 sd). A metric that does not see a change cannot show it in a chain either.")),
        ("Sample grids", f'<div class="grids">{grids}</div>' if grids else ""),
        ("Housekeeping: time, training-set sizes and sources, training loss",
         figure("housekeeping.png", "How the chain ran, not what it made.")
         + (page.table(housekeeping_columns, record.rows) if record.rows else "")),
        (f"Config ({config_source})", f"<pre>{page.esc(config_text)}</pre>" if config_text else ""),
    ]
    return page.document(f"imgcollapse run: {record.root.name}", sections, intro)


def build_run_report(root: Path) -> RunRecord:
    """Rebuild every figure and report.html of the run in `root` from disk; returns what was found."""
    record = read_run(root)
    figures: dict[str, Path | None] = {}
    class_note = ""
    if record.done:
        _rebuild_missing_grids(record)
        figures = {"collapse_strip.png": _strip(record), "collapse.gif": _gif(record),
                   "curves.png": _curves(record), "housekeeping.png": _curves(record, housekeeping=True),
                   header.REAL_GRID: header.rebuild_real_grid(record.root, record.config)}
        figures["classes.png"], class_note = _classes(record)
    figures["calibration.png"], calibration = _calibration(record)
    atomic_write_text(record.root / "report.html", _html(record, figures, class_note, calibration))
    return record
