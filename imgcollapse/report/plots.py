"""Charts drawn with matplotlib: metric curves per generation, class frequencies, sweep bands across seeds.

Columns are read generically: any numeric column of `metrics.csv` gets a panel. A few naming conventions
group columns into one panel (`num_*` training-set sizes, `*seconds` timings, `share_gen_*` sources) or
leave them to their own figure (`class_freq_*` goes to the class plot). Figures are drawn on a bare
`Figure` (no pyplot state) and saved without a software tag, so the same data gives the same PNG bytes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from imgcollapse.metric_facts import badness, worse
from imgcollapse.report.metric_info import MEMBER_COLUMNS
from imgcollapse.report.metric_info import bounds as metric_bounds
from imgcollapse.report.metric_info import space as metric_space
from imgcollapse.report.metric_info import title as metric_title
from imgcollapse.store import atomic_write

PANEL_INCHES = (2.6, 2.0)  # one small panel per metric
PANEL_COLUMNS = 4
DPI = 100  # a panel is 260 x 200 pixels
CLASS_FIGURE_INCHES = (10.0, 4.0)
CLASS_FREQ_PREFIX = "class_freq_"  # per-class sample frequencies (metrics issue): drawn in classes.png
PER_CLASS_PREFIXES = ("recall_class_", "coverage_class_")  # per-class diversity: in the table, not a panel each
COMPANIONS = ("_lo", "_hi", "_sd")  # a column's interval and spread: drawn as its band, not as panels
GROUPS = (  # (title, predicate on a column name): columns that read better together in one panel
    ("training-set size", lambda c: c.startswith("num_")),
    ("seconds", lambda c: c.endswith("seconds")),
    ("training-set share by source", lambda c: c.startswith("share_gen_")),
)
STYLE = {  # smaller text and fixed title position: drawing ~20 panels stays well under a second
    "axes.titley": 1.0, "axes.titlepad": 3, "axes.titlesize": 9, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 6, "axes.labelsize": 7, "font.size": 8,
}


@dataclass
class Panel:
    title: str
    columns: list[str] = field(default_factory=list)


def to_number(value: Any) -> float:
    """A metric value as float; None, '' and non-numbers become NaN."""
    if isinstance(value, bool) or value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def numeric_columns(rows: Sequence[Mapping[str, Any]], skip: Sequence[str] = ("generation",)) -> list[str]:
    """Columns (in first-seen order) whose values are numbers in at least one row and never text."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and k not in skip]
    numeric = []
    for c in columns:
        values = [row.get(c) for row in rows]
        texts = [v for v in values if v not in (None, "") and math.isnan(to_number(v)) and str(v).lower() != "nan"]
        if not texts and any(math.isfinite(to_number(v)) for v in values):
            numeric.append(c)
    return numeric


def is_companion(column: str, columns: Sequence[str]) -> bool:
    """`fid_lo`, `fid_hi`, `fid_sd` belong to `fid` (when `fid` is a column too)."""
    return column.endswith(COMPANIONS) and column[:-3] in columns


def curve_panels(columns: Sequence[str]) -> list[Panel]:
    """One panel per metric column, grouped columns sharing a panel; class frequencies, per-class scores and
    intervals left out (an interval is its column's band)."""
    panels: list[Panel] = []
    grouped: dict[str, Panel] = {}
    for c in columns:
        if c.startswith((CLASS_FREQ_PREFIX, *PER_CLASS_PREFIXES)) or is_companion(c, columns):
            continue
        title = next((t for t, belongs in GROUPS if belongs(c)), None)
        if title is None:
            panels.append(Panel(c, [c]))
        elif title in grouped:
            grouped[title].columns.append(c)
        else:
            grouped[title] = Panel(title, [c])
            panels.append(grouped[title])
    return panels


def panel_grid_pixels(num_panels: int, columns: int = PANEL_COLUMNS) -> tuple[int, int]:
    """(width, height) in pixels of a figure of `num_panels` small panels, `columns` to a row."""
    cols, rows = min(num_panels, columns), math.ceil(num_panels / columns)
    return round(cols * PANEL_INCHES[0] * DPI), round(rows * PANEL_INCHES[1] * DPI)


def _panel_axes(fig: Figure, num_panels: int, columns: int = PANEL_COLUMNS, bottom: float = 0.35,
                hspace: float = 0.55) -> list:
    cols, rows = min(num_panels, columns), math.ceil(num_panels / columns)
    width, height = fig.get_size_inches()
    axes = fig.subplots(rows, cols, squeeze=False).flat
    # margins in inches, so every panel looks the same whatever the grid
    fig.subplots_adjust(left=0.5 / width, right=1 - 0.1 / width, bottom=bottom / height, top=1 - 0.3 / height,
                        wspace=0.45, hspace=hspace)
    axes = list(axes)
    for ax in axes[num_panels:]:
        ax.set_visible(False)
    for ax in axes[:num_panels]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.grid(alpha=0.3, lw=0.5)
    return axes[:num_panels]


def _series(rows: Sequence[Mapping[str, Any]], column: str) -> tuple[np.ndarray, np.ndarray]:
    g = np.array([to_number(r.get("generation")) for r in rows])
    v = np.array([to_number(r.get(column)) for r in rows])
    keep = np.isfinite(g) & np.isfinite(v)
    return g[keep], v[keep]


def _natural_range(ax: Any, *columns: str) -> None:
    """Bounded metrics (precision, recall, coverage, shares) on their whole range, so a drop reads at its size."""
    found = {metric_bounds(c) for c in columns}
    if len(found) == 1 and (lo_hi := found.pop()) is not None:
        pad = 0.03 * (lo_hi[1] - lo_hi[0])
        ax.set_ylim(lo_hi[0] - pad, lo_hi[1] + pad)


FAMILY_MARKERS = ("o", "s", "^", "D", "v", "P")  # chain.models: which family trained a generation
EXTRA_COLORS = ("C1", "C4", "C3", "C5", "C6", "C8", "C9")  # members and families: not the pool's C0, not green (real)


def families_in_turn(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The families of a chain whose generations alternate them (chain.models), in order of first use; [] when
    every row is one family's (or a population's)."""
    distinct = list(dict.fromkeys(f for row in rows if isinstance(f := row.get("family"), str) and f))
    return distinct if len(distinct) > 1 else []


def curves_figure(rows: Sequence[Mapping[str, Any]], references: Mapping[str, float] | None = None,
                  columns: Sequence[str] | None = None, members: Sequence[str] = ()) -> Figure:
    """Every numeric metric (or those in `columns`) against generation, one small panel each, its 95% interval as
    a band, generation 0 as a dashed line; titles say which way is better and the feature space, bounded metrics
    span their range.

    `references` maps a column to a real-data value drawn dotted (the real floor: two real sets of the rows' size).
    `members` (chain.population) draws each member's own score (`fid_vae`, for the MEMBER_COLUMNS) dash-dotted in its
    metric's panel, beside the pool's; rows whose `family` differs (chain.models) get one marker per family.
    """
    numeric = numeric_columns(rows)
    member_lines = {c: [(m, f"{c}_{m}") for m in members if f"{c}_{m}" in numeric]
                    for c in numeric if c in MEMBER_COLUMNS}  # (config refuses a member name that makes a metric's)
    owned = {column for lines in member_lines.values() for _, column in lines}
    panels = curve_panels([c for c in numeric if (columns is None or c in columns) and c not in owned])
    if not panels:
        raise ValueError("no numeric metric columns to draw")
    references = references or {}
    families = [row.get("family") for row in rows]
    distinct = families_in_turn(rows)
    by_family = bool(distinct)
    legend_for_members = legend_for_families = True  # once, in the first panel that needs it
    with matplotlib.rc_context(STYLE):
        w, h = panel_grid_pixels(len(panels))
        fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI)
        for ax, panel in zip(_panel_axes(fig, len(panels)), panels, strict=True):
            ax.set_title(metric_title(panel.title) if panel.columns == [panel.title] else panel.title)
            extra = member_lines.get(panel.columns[0], []) if len(panel.columns) == 1 else []
            legend = 1 < len(panel.columns) <= 6 or any(c in references for c in panel.columns)
            for i, column in enumerate(panel.columns):
                g, v = _series(rows, column)
                color = f"C{i % 10}"
                label = column if len(panel.columns) > 1 else ("pool" if extra and legend_for_members else None)
                single = len(panel.columns) == 1
                ax.plot(g, v, marker="" if by_family and single else "o", ms=2.5, lw=1.2, color=color, label=label)
                if by_family and single:
                    for k, family in enumerate(distinct):
                        mine = [r for r, f in zip(rows, families, strict=True) if f == family]
                        fg, fv = _series(mine, column)
                        ax.plot(fg, fv, ls="none", marker=FAMILY_MARKERS[k % len(FAMILY_MARKERS)], ms=4,
                                color=EXTRA_COLORS[k % len(EXTRA_COLORS)],
                                label=family if legend_for_families else None)
                    legend |= legend_for_families
                    legend_for_families = False
                lo_g, lo = _series(rows, column + "_lo")
                hi_g, hi = _series(rows, column + "_hi")
                if len(lo) and np.array_equal(lo_g, hi_g):  # the 95% interval of each generation's value
                    ax.fill_between(lo_g, lo, hi, color=color, alpha=0.2, lw=0)
                if len(v):
                    ax.axhline(v[0], ls="--", lw=0.8, color=color, alpha=0.6)  # the first (generation-0) value
                if column in references and math.isfinite(references[column]):
                    ax.axhline(references[column], ls=":", lw=1.0, color="green", label="real data")
            for k, (member, column) in enumerate(extra):  # each member on its own samples
                g, v = _series(rows, column)
                ax.plot(g, v, ls="-.", marker="o", ms=2, lw=1.0, color=EXTRA_COLORS[k % len(EXTRA_COLORS)],
                        label=member if legend_for_members else None)
            if extra:
                legend |= legend_for_members
                legend_for_members = False
            if legend:
                ax.legend(loc="best", frameon=False)
            _natural_range(ax, *panel.columns)
            if len(panel.columns) == 1 and metric_space(panel.columns[0]):
                ax.set_ylabel(metric_space(panel.columns[0]))  # the feature space, beside the axis it scales
            ax.set_xlabel("generation")
    return fig


def classes_figure(class_names: Sequence[str], real: Sequence[float] | None, generations: Sequence[int],
                   frequencies: np.ndarray) -> Figure:
    """Per-class share of samples by generation (heatmap, rarest real classes at the bottom) and bars of
    the real frequencies next to the first and last generation. `frequencies` is generations × classes."""
    frequencies = np.asarray(frequencies, dtype=float)
    # rarest real classes at the bottom; classes within half a percent of each other keep their order
    order = (np.argsort(-np.round(np.asarray(real) * 100), kind="stable") if real is not None
             else np.arange(len(class_names)))
    names = [str(class_names[i]) for i in order]
    columns = ([np.asarray(real)[order]] if real is not None else []) + [f[order] for f in frequencies]
    labels = (["real"] if real is not None else []) + [str(g) for g in generations]
    table = np.stack(columns, axis=1)  # classes × (real + generations)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=CLASS_FIGURE_INCHES, dpi=DPI)
        heat, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.9, wspace=0.25)
        image = heat.imshow(table * 100, aspect="auto", cmap="viridis", vmin=0, interpolation="nearest")
        heat.set_xticks(range(len(labels)), labels)
        heat.set_yticks(range(len(names)), names)
        heat.set_xlabel("generation")
        heat.set_title("share of samples per class (%), by generation")
        if real is not None:
            heat.axvline(0.5, color="white", lw=2)
        if table.size <= 400:  # annotate cells while they are large enough to read
            for (i, j), value in np.ndenumerate(table):
                heat.text(j, i, f"{value * 100:.0f}", ha="center", va="center", fontsize=6,
                          color="white" if value < table.max() * 0.6 else "black")
        fig.colorbar(image, ax=heat, fraction=0.04, pad=0.02)
        x = np.arange(len(names))
        series = [("real", columns[0])] if real is not None else []
        series += [(f"gen {generations[0]}", frequencies[0][order])]
        if len(generations) > 1:
            series.append((f"gen {generations[-1]}", frequencies[-1][order]))
        width = 0.8 / len(series)
        for k, (label, values) in enumerate(series):
            bars.bar(x + (k - (len(series) - 1) / 2) * width, values * 100, width, label=label,
                     color="grey" if label == "real" else f"C{k}")
        bars.set_xticks(x, names, rotation=90 if len(names) > 12 else 0)
        bars.set_ylabel("% of samples")
        bars.set_title("real vs first and last generation")
        bars.legend(frameon=False)
    return fig


def sweep_figure(bands: Mapping[str, Mapping[str, tuple[Any, ...]]],
                 colors: Mapping[str, str] | None = None, width: float | None = None) -> Figure:
    """One panel per metric: a line per group (mean across seeds) with its 95% interval as a band, n in the legend,
    and each seed as a thin line behind it where the bands carry them.

    `bands[metric][group] = (generations, mean, half-width of the interval, n seeds[, {seed: (generations,
    values)}])`; `colors[group]`: the same group in the same colour across figures (default: by order). `width`:
    the figure's width in inches for a paper (3.5: one column, two panels a row; 7: two columns, four a row);
    default: the report's panels.
    """
    metrics = list(bands)
    if not metrics:
        raise ValueError("no numeric metric columns to draw")
    columns = PANEL_COLUMNS if width is None or width > 5 else 2
    groups = list(dict.fromkeys(g for by_group in bands.values() for g in by_group))
    with matplotlib.rc_context(STYLE):
        if width is None:
            w, h = panel_grid_pixels(len(metrics), columns)
            fig, bottom, hspace = Figure(figsize=(w / DPI, h / DPI), dpi=DPI), 0.35, 0.55
        else:  # a paper's column: square-ish panels, the legend in its own rows below them
            rows = math.ceil(len(metrics) / columns)
            legend = 0.16 * math.ceil(len(groups) / columns) + 0.15
            panel = width / columns * 0.85
            fig = Figure(figsize=(width, rows * (panel + 0.15) + legend + 0.3), dpi=DPI)
            bottom, hspace = 0.35 + legend, 0.75
        for index, (ax, metric) in enumerate(zip(_panel_axes(fig, len(metrics), columns, bottom, hspace), metrics,
                                                 strict=True)):
            ax.set_title(metric_title(metric))
            for k, (group, (g, mean, half, *rest)) in enumerate(bands[metric].items()):
                color = (colors or {}).get(group, f"C{k % 10}")
                n = rest[0] if rest else None
                for seed_g, seed_v in (rest[1] if len(rest) > 1 else {}).values():
                    ax.plot(seed_g, seed_v, lw=0.5, alpha=0.45, color=color, zorder=1)
                label = group if n is None else f"{group} (n={_seeds(n)})"
                ax.plot(g, mean, marker="o", ms=2.5, lw=1.2, color=color, label=label, zorder=3)
                ax.fill_between(g, mean - half, mean + half, color=color, alpha=0.2, lw=0, zorder=2)
            _natural_range(ax, metric)
            ax.set_xlabel("generation")
            if index == 0 and width is None:
                ax.legend(loc="best", frameon=False)
            elif index == 0:
                handles, labels = ax.get_legend_handles_labels()
                fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), columns), frameon=False,
                           bbox_to_anchor=(0.5, 0.0))
    return fig


PAPER_WIDTHS = {"": 7.0, "_1col": 3.5}  # inches: a two-column figure (the default name) and a one-column one


def save_paper_figures(draw: Callable[[float], Figure], stem: Path, formats: tuple[str, ...] = ("pdf", "svg")) -> \
        list[Path]:
    """Vector copies of a figure for a paper: `stem.pdf`/`.svg` two columns wide (7 in) and `stem_1col.pdf`/`.svg`
    one column (3.5 in); fonts embedded as TrueType (journals refuse Type 3) and no creation date, so a redraw of
    the same data is byte-identical. `draw(width)` makes the figure at that width."""
    written = []
    # fontTools logs every glyph it subsets at INFO: a study's log would drown in it
    logging.getLogger("fontTools").setLevel(max(logging.WARNING, logging.getLogger("fontTools").level))
    with matplotlib.rc_context({"pdf.fonttype": 42, "svg.fonttype": "none", "svg.hashsalt": "imgcollapse"}):
        for suffix, width in PAPER_WIDTHS.items():
            fig = draw(width)
            for fmt in formats:
                path = stem.with_name(f"{stem.name}{suffix}.{fmt}")
                meta = {"CreationDate": None} if fmt == "pdf" else {"Date": None}
                atomic_write(path, lambda tmp, f=fmt, m=meta, fg=fig: fg.savefig(tmp, format=f, metadata=m))
                written.append(path)
    return written


def calibration_figure(result: Mapping[str, Any]) -> Figure:
    """Which metric sees which change: each cell is the response at the strongest change, in noise standard
    deviations toward worse (red) or better (blue), marked ✓ where the calibration's verdict is "sees it"."""
    changes = list(result["changes"])
    columns = list(result["changes"][changes[0]]["metrics"]) if changes else []
    table = np.full((len(columns), len(changes)), np.nan)
    marks = np.full(table.shape, "", dtype=object)
    for j, change in enumerate(changes):
        for i, column in enumerate(columns):
            entry = result["changes"][change]["metrics"][column]
            values = np.asarray(entry["values"], dtype=float)
            sd = entry["noise_sd"] if entry["noise_sd"] and math.isfinite(entry["noise_sd"]) else math.nan
            if len(values) and np.isfinite(values[[0, -1]]).all() and worse(column) is not None:
                delta = badness(column, values[-1]) - badness(column, values[0])
                table[i, j] = delta / sd if sd and sd > 0 else np.sign(delta) * 10
            marks[i, j] = {"sees it": "✓", "moves the other way": "←"}.get(entry["verdict"], "")
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(1.1 * len(changes) + 2.6, 0.24 * len(columns) + 1.3), dpi=DPI)
        ax = fig.subplots()
        fig.subplots_adjust(left=2.2 / fig.get_figwidth(), right=0.97, bottom=0.9 / fig.get_figheight(),
                            top=1 - 0.45 / fig.get_figheight())
        image = ax.imshow(np.clip(table, -10, 10), aspect="auto", cmap="RdBu_r", vmin=-10, vmax=10,
                          interpolation="nearest")
        ax.set_xticks(range(len(changes)),
                      [f"{c}\n({result['changes'][c]['kind']})" for c in changes], fontsize=7)
        ax.set_yticks(range(len(columns)), columns, fontsize=7)
        for (i, j), mark in np.ndenumerate(marks):
            if mark:
                strong = np.isfinite(table[i, j]) and abs(table[i, j]) > 6
                ax.text(j, i, mark, ha="center", va="center", fontsize=8, color="white" if strong else "black")
        ax.set_title(f"response to the strongest change, in noise sd toward worse (✓ sees it; n = {result['size']})")
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    return fig


def scaling_figure(curves: Mapping[str, Mapping[str, Mapping[str, Any]]], generation: int,
                   width: float | None = None, colors: Mapping[str, str] | None = None) -> Figure:
    """One log-log panel per metric: excess error over the real floor against the real pool's size, a line per curve
    (geometric mean across seeds) with its 95% band (a t-interval of log excess), each seed a thin line behind it,
    and the legend giving each curve's power-law exponent b (mean and 95% interval across seeds).

    `curves[metric][label] = {"sizes": (k,), "excess": (seeds, k), "exponent": per-seed b}`; `width`: inches, for
    a paper (3.5: one column, panels stacked); `colors[label]`: a curve's colour in every figure."""
    from scipy import stats as st

    metrics = list(curves)
    if not metrics:
        raise ValueError("no scaling curves to draw")
    columns = min(len(metrics), 3 if width is None or width > 5 else 1)
    with matplotlib.rc_context(STYLE):
        w, h = panel_grid_pixels(len(metrics), columns)
        size = (1.25 * w / DPI, 1.35 * h / DPI) if width is None else (width, width / columns * 0.8
                                                                        * math.ceil(len(metrics) / columns) + 0.4)
        fig = Figure(figsize=size, dpi=DPI)
        for ax, metric in zip(_panel_axes(fig, len(metrics), columns, 0.45, 0.6), metrics, strict=True):
            for k, (label, curve) in enumerate(curves[metric].items()):
                color = (colors or {}).get(label, f"C{k % 10}")
                sizes, excess = np.asarray(curve["sizes"], float), np.asarray(curve["excess"], float)
                logs = np.log(np.where(excess > 0, excess, np.nan))
                for row in excess:
                    ax.plot(sizes, np.where(row > 0, row, np.nan), lw=0.5, alpha=0.4, color=color, zorder=1)
                n = np.sum(np.isfinite(logs), axis=0)
                mean = np.nanmean(logs, axis=0)
                sd = np.nanstd(logs, axis=0, ddof=1) if len(logs) > 1 else np.zeros_like(mean)
                half = np.where(n > 1, st.t.ppf(0.975, np.maximum(n - 1, 1)) * sd / np.sqrt(np.maximum(n, 1)), 0)
                b = np.array([x for x in curve["exponent"] if x is not None and math.isfinite(x)], float)
                text = "b ?"
                if len(b) > 1:
                    q = st.t.ppf(0.975, len(b) - 1) * b.std(ddof=1) / math.sqrt(len(b))
                    text = f"b = {b.mean():.2f} [{b.mean() - q:.2f}, {b.mean() + q:.2f}]"
                elif len(b):
                    text = f"b = {b[0]:.2f}"
                ax.plot(sizes, np.exp(mean), marker="o", ms=3, lw=1.3, color=color, zorder=3,
                        label=f"{label}: {text} (n={int(n.min()) if len(n) else 0})")
                ax.fill_between(sizes, np.exp(mean - half), np.exp(mean + half), color=color, alpha=0.2, lw=0,
                                zorder=2)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())  # 6x10^-1 on every minor tick buries the curves
            ax.set_title(f"{metric_title(metric)}: excess over the real floor, gen {generation}")
            ax.set_xlabel("real pool size (images)")
            ax.legend(loc="best", frameon=False)
    return fig


def filter_figure(points: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]]) -> Figure:
    """Collapse against the filter's recall: one panel per metric, one point per chain (x: the share of the pool's
    generated images its filter removed, averaged over generations; y: the metric at the last generation), an arm's
    mean with a cross of its seeds' spread.

    `points[metric][arm] = [(recall, value) per seed]`."""
    metrics = list(points)
    if not metrics:
        raise ValueError("no filter rates to draw")
    with matplotlib.rc_context(STYLE):
        w, h = panel_grid_pixels(len(metrics), min(len(metrics), 3))
        fig = Figure(figsize=(1.25 * w / DPI, 1.35 * h / DPI), dpi=DPI)
        for ax, metric in zip(_panel_axes(fig, len(metrics), min(len(metrics), 3), 0.45, 0.6), metrics, strict=True):
            for k, (arm, xy) in enumerate(points[metric].items()):
                xy_arr = np.asarray(xy, dtype=float).reshape(-1, 2)
                color = f"C{k % 10}"
                ax.scatter(xy_arr[:, 0], xy_arr[:, 1], s=8, color=color, alpha=0.5, lw=0)
                mx, my = xy_arr.mean(0)
                ax.errorbar(mx, my, xerr=xy_arr[:, 0].std(), yerr=xy_arr[:, 1].std(), fmt="o", ms=4, color=color,
                            lw=1, label=f"{arm} (n={len(xy_arr)})")
            ax.set_xlim(-0.05, 1.05)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=6))  # a share, not a generation: not integers
            ax.set_title(f"{metric_title(metric)} at the last generation")
            ax.set_xlabel("filter recall: share of generated images removed")
            ax.legend(loc="best", frameon=False)
    return fig


def _seeds(n: np.ndarray) -> str:
    lo, hi = int(np.min(n)), int(np.max(n))
    return str(lo) if lo == hi else f"{lo}-{hi}"


def save_figure(fig: Figure, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically, with no software tag, so reruns are byte-identical."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}))
