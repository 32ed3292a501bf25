"""A study's answer drawn from disk: study.csv (every row of every chain), claims.json (imgcollapse/verdicts: the
tests, their levels and verdicts), one figure per claim, and study.html. Per arm and generation the bands are the
mean across seeds with its plain 95% t-interval (n shown); per claim the verdict, its family-wise level and one
sentence saying why; per test and metric the paired differences, the bounds at the levels error control gave it,
the smallest effect the design could detect, and where the arms first separate (descriptive).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgcollapse.report import metric_info, page
from imgcollapse.report.plots import filter_figure, save_figure, save_paper_figures, scaling_figure, sweep_figure
from imgcollapse.store import RunStore, atomic_write_text, csv_text, read_failed, to_json
from imgcollapse.verdicts.judge import judge, number, reading, series, t_interval
from imgcollapse.verdicts.plan import plan_status
from imgcollapse.verdicts.rules import CONTRADICTED, SUPPORTED

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
HEADLINE = ("fid", "recall", "coverage", "precision")  # drawn for every arm when a claim names other metrics


# Reading the study --------------------------------------------------------------------------------------------
def is_study_dir(root: Path) -> bool:
    return (Path(root) / STUDY_FILE).is_file()


def read_rows(root: Path, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every finished generation of every chain, with `arm`, `seed` and `shared_gen0` (the row was adopted)."""
    rows = []
    for chain in record["chains"]:
        run = Path(root) / chain["run_dir"]
        if not (run / "gen_000").is_dir():
            continue
        shared_file = run / "shared_gen0.json"  # only a copied generation 0 (not an adopted model) is not its own
        shared = shared_file.exists() and json.loads(shared_file.read_text()).get("shared", "files") == "files"
        for row in RunStore(run).rows():
            rows.append({"arm": chain["arm"], "seed": chain["seed"],
                         "shared_gen0": bool(shared and row.get("generation") == 0), **row})
    return rows


def read_floors(root: Path, record: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """{run dir: {metric: its real floor}} from each chain's run.json (report.metric_info.real_values); a chain
    without a readable one is left out."""
    out = {}
    for chain in record["chains"]:
        path = Path(root) / chain["run_dir"] / "run.json"
        try:
            out[chain["run_dir"]] = metric_info.real_values(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


# Writing ---------------------------------------------------------------------------------------------------------
def arm_bands(rows: Sequence[Mapping[str, Any]], arms: Sequence[str], metric: str) -> dict[str, tuple]:
    """{arm: (generations, mean, half-width of the 95% t-interval, n, {seed: (generations, values)})} across
    seeds."""
    out = {}
    for arm in arms:
        by_seed = series(rows, arm, metric)
        gens = sorted({g for values in by_seed.values() for g in values})
        means, halves, counts = [], [], []
        for g in gens:
            st = t_interval([v[g] for v in by_seed.values() if g in v])
            means.append(st["mean"])
            halves.append(0.0 if st["lo"] is None else st["mean"] - st["lo"])
            counts.append(st["n"])
        if gens:
            seeds = {seed: (np.array(sorted(v), dtype=float), np.array([v[g] for g in sorted(v)], dtype=float))
                     for seed, v in by_seed.items()}
            out[arm] = (*(np.array(x, dtype=float) for x in (gens, means, halves, counts)), seeds)
    return out


# Tidy tables: one row per (arm, seed, generation, metric), and per (arm, generation, metric) across seeds ----------
LONG_COLUMNS = ("arm", "seed", "generation", "metric", "value")
SUMMARY_COLUMNS = ("arm", "generation", "metric", "mean", "lo", "hi", "n")
ID_COLUMNS = ("arm", "seed", "generation", "shared_gen0")


def long_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """study.csv's rows in long (tidy) form: one row per arm, seed, generation and numeric metric, as seaborn and
    pandas' `melt` expect; an interval's or spread's own columns (`_lo`, `_hi`, `_sd`) are metrics like any other."""
    out = []
    for row in rows:
        for column, value in row.items():
            found = number(value) if column not in ID_COLUMNS else None
            if found is not None:
                out.append({"arm": row["arm"], "seed": row["seed"], "generation": row["generation"],
                            "metric": column, "value": found})
    return out


def summary_rows(long: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per arm, generation and metric: the mean across seeds, its plain 95% t-interval (lo, hi; empty at n = 1) and
    n."""
    groups: dict[tuple, list[float]] = {}
    for r in long:
        groups.setdefault((r["arm"], r["generation"], r["metric"]), []).append(r["value"])
    out = []
    for (arm, generation, metric), values in groups.items():
        st = t_interval(values)
        out.append({"arm": arm, "generation": generation, "metric": metric, "mean": st["mean"], "lo": st["lo"],
                    "hi": st["hi"], "n": st["n"]})
    return out


def claim_summary(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per claim, read by the HTML, Markdown and LaTeX tables alike: its name, statement, verdict, family-wise
    level (None: not stated), seeds (n), the sentence that says why, and the claim itself."""
    return [{"name": name, "statement": claim["statement"], "verdict": reading(claim), "level": claim.get("level"),
             "n": max((t["last"]["n"] for t in claim["tests"]), default=0), "why": claim.get("reason", ""),
             "claim": claim} for name, claim in result["claims"].items()]


def claims_summary_markdown(result: Mapping[str, Any]) -> str:
    """One row per claim as Markdown (the README's): the claim, its verdict at its level, and why."""
    lines = ["| claim | verdict (level) | why (d > 0: as the claim says) |", "| --- | --- | --- |"]
    for row in claim_summary(result):
        verdict = row["verdict"] if row["verdict"] == "inconclusive" else f"**{row['verdict']}**"
        level = "" if row["level"] is None else f" ({100 * row['level']:.3g}%)"
        lines.append(f"| {row['statement']} | {verdict}{level} | {row['why']} |")
    return "\n".join(lines)


def claims_latex(result: Mapping[str, Any], caption: str = "") -> str:
    """The claims as a LaTeX table (booktabs): claim, verdict at its level, n, and why; `\\usepackage{booktabs}`
    and `tabularx` in the preamble."""
    lines = [r"\begin{table*}[t]", r"\centering", r"\small",
             r"\begin{tabularx}{\textwidth}{@{}p{0.26\textwidth}lcX@{}}", r"\toprule",
             r"Claim & Verdict (level) & $n$ & Why ($d > 0$: as the claim says) \\", r"\midrule"]
    for row in claim_summary(result):
        verdict = latex_escape(row["verdict"])
        if row["verdict"] != "inconclusive":
            verdict = rf"\textbf{{{verdict}}}"
        level = "" if row["level"] is None else f" ({100 * row['level']:.3g}\\%)"
        lines.append(f"{latex_escape(row['statement'])} & {verdict}{level} & {row['n']} & "
                     f"{latex_escape(row['why'])} \\\\")
    lines += [r"\bottomrule", r"\end{tabularx}",
              rf"\caption{{{latex_escape(caption)}}}" if caption else "", r"\end{table*}"]
    return "\n".join(line for line in lines if line) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "−": "$-$", "×": r"$\times$",
          "≥": r"$\geq$", "≤": r"$\leq$", "→": r"$\to$", "≫": r"$\gg$", "±": r"$\pm$", "…": r"\ldots{}",
          "–": "--", "—": "---", "<": "$<$", ">": "$>$"}


def latex_escape(text: str) -> str:
    """Text safe in a LaTeX table cell (pdflatex: the kit's Unicode math signs become math mode)."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def _fmt(value: Any, digits: int = 3) -> str:
    found = number(value)
    return "" if found is None else f"{found:.{digits}g}"


def _interval_text(st: Mapping[str, Any]) -> str:
    """`mean [lo95, hi95]`: the plain 95% t-interval (descriptive)."""
    if st.get("mean") is None:
        return "no seeds"
    lo, hi = st.get("lo95", st.get("lo")), st.get("hi95", st.get("hi"))
    if lo is None:
        return f"{_fmt(st['mean'])} (n={st['n']}: no interval)"
    return f"{_fmt(st['mean'])} [{_fmt(lo)}, {_fmt(hi)}]"


def _bounds_text(test: Mapping[str, Any]) -> str:
    """The one-sided bounds the rule reads, each with its level: `lo > 0` decides supported, `hi < 0` contradicted."""
    last = test["last"]
    if last.get("lo") is None:
        return "none"
    return (f"lo {_fmt(last['lo'])} (level {test['level_supported']:.2g}), "
            f"hi {_fmt(last['hi'])} (level {test['level_contradicted']:.2g})")


def _separates_text(found: Any) -> str:
    if not found:
        return ""
    if isinstance(found, Mapping):
        return f"{found['generation']} ({found['direction']})"
    return str(found)


def level_text(claim: Mapping[str, Any]) -> str:
    """`family-wise level 5%` or why none is stated."""
    level = claim.get("level")
    if level is None:
        return "family-wise level not stated: a rule of the study's own form"
    return f"family-wise level {100 * level:.3g}%: where d sits at the rules' threshold (0 unless a margin is set) " \
           "in every test, decided at most that often"


def _claim_arms(claim: Mapping[str, Any]) -> list[str]:
    """The arms a claim's tests read, in order (a crossed design's four, a scaling test's curves)."""
    return list(dict.fromkeys(a for t in claim["tests"] for a in (t["arm"], t["vs_arm"], *(t.get("mirror") or {})
                                                                   .values(), *t.get("arms", []),
                                                                   *t.get("vs_arms", []))))


def curve_label(arms: Sequence[str]) -> str:
    """A scaling curve's name: the parts of its arms' names (split at `_`) that every arm shares (`n87_p50`,
    `n175_p50`: `p50`), else its first and last arm."""
    shared = [part for part in arms[0].split("_") if all(part in arm.split("_") for arm in arms[1:])]
    return "_".join(shared) or f"{arms[0]}..{arms[-1]}"


def scaling_curves(claim: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{metric: {curve label: sizes, per-seed excess, per-seed exponent}} of a claim's scaling tests, for the
    figure (plots.scaling_figure); each curve once."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    seen: dict[tuple[str, str], tuple[str, ...]] = {}
    for t in claim["tests"]:
        if t.get("kind") != "scaling":
            continue
        for key in ("arms", "vs_arms"):
            label = curve_label(t[key])
            if seen.setdefault((t["metric"], label), tuple(t[key])) != tuple(t[key]):
                label = f"{label} ({t[key][0]}..{t[key][-1]})"  # another curve's name: name this one by its arms
            if label in out.get(t["metric"], {}):
                continue
            seeds = [str(s) for s in t["seeds"]]
            points = [{k: {str(s): v for s, v in p[k].items()} for k in ("size", "excess")}
                      for p in (t["points"][arm] for arm in t[key])]
            sizes = []
            for arm, p in zip(t[key], points, strict=True):
                found = {p["size"].get(s) for s in seeds} - {None}
                if len(found) > 1:  # one x per point: the test itself reads each seed's own size
                    log.warning("arm %s: the real pool's size differs by seed (%s): drawn at their mean", arm,
                                sorted(found))
                sizes.append(float(np.mean(list(found))) if found else float("nan"))
            excess = [[p["excess"].get(s) if p["excess"].get(s) is not None else np.nan for p in points]
                      for s in seeds]
            exponents = {str(s): b for s, b in t["exponents"][key].items()}
            out.setdefault(t["metric"], {})[label] = {"sizes": sizes, "excess": excess,
                                                      "exponent": [exponents.get(s) for s in seeds]}
    return {m: dict(sorted(by_label.items(), key=lambda kv: _natural(kv[0]))) for m, by_label in out.items()}


def _natural(text: str) -> list:
    """A sort key that puts p5 before p50 and n87 before n175."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def filter_points(rows: Sequence[Mapping[str, Any]], arms: Sequence[str], metrics: Sequence[str]
                  ) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{metric: {arm: [(the filter's recall averaged over generations, the metric at the last generation every seed
    of the arm reached) per seed]}} for arms whose rows record filter_tpr (regime=contaminated)."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for metric in metrics:
        for arm in arms:
            recall, values = series(rows, arm, "filter_tpr"), series(rows, arm, metric)
            xy = []
            common = [set(v) for v in values.values() if v]
            last = max(set.intersection(*common)) if common else None  # one generation for every seed of the arm
            for seed, by_g in recall.items():
                if by_g and last is not None and last in values.get(seed, {}):
                    xy.append((float(np.mean([v for g, v in by_g.items() if g <= last])), values[seed][last]))
            if xy:
                out.setdefault(metric, {})[arm] = xy
    return out


def _claim_metrics(claim: Mapping[str, Any]) -> list[str]:
    seen: list[str] = []
    for t in claim["tests"]:
        for m in (t["metric"], t["vs_metric"]):
            if m not in seen:
                seen.append(m)
    return seen


def _claim_section(root: Path, name: str, claim: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                   record: Mapping[str, Any], figure: Path | None) -> str:
    arms = _claim_arms(claim)
    parts = [f"<p><b>{page.esc(claim['statement'])}</b>" + (f" ({page.esc(claim['source'])})" if claim["source"]
                                                          else "") + "</p>",
             f"<p>verdict: <b class=verdict-{claim['verdict']}>{page.esc(reading(claim))}</b>"
             f"{' (incomplete: fewer seeds than planned)' if claim.get('incomplete') else ''} "
             f"(its tests joined by {page.esc(claim['combine'])}; {level_text(claim)})</p>",
             f"<p>why: {page.esc(claim.get('reason', ''))}</p>"]
    if claim.get("note"):
        parts.append(f"<p>{page.esc(claim['note'])}</p>")
    parts.append(page.bullet_list([f"{g['name']}: {reading(g)}" + ("" if g["votes"] else " (no metric the "
                                   "calibration trusts for it: no vote)") + f" ({', '.join(g['metrics'])}; "
                                   f"metrics joined by {g['combine']})" for g in claim.get("groups", [])]))
    test_rows = []
    for t in claim["tests"]:
        vs = t["vs_arm"] + (f" gen {t['vs_generation']}" if t["vs_generation"] != t["generation"] else "")
        arm = f"{t['arm']} gen {t['generation']}"
        if t.get("kind") == "crossed":  # the other half of the design, and the unit of d
            vs += f"; mirrored: {t['mirror']['arm']} vs {t['mirror']['vs_arm']} ({t.get('scale_note', '')})"
            arm += " (changes since gen 0)"
        elif t.get("kind") == "deceleration":
            arm, vs = f"{t['arm']} step {t['generation'] - 1}→{t['generation']}", f"{t['arm']} step 0→1"
        elif t.get("kind") == "scaling":  # d: the vs curve's exponent less the arm curve's
            arm = f"{curve_label(t['arms'])} curve ({len(t['arms'])} sizes) gen {t['generation']}"
            vs = f"{curve_label(t['vs_arms'])} curve"
        expect = t["expect"] + (f" (two-sided: d > 0 {t['words'][0]}, d < 0 {t['words'][1]})" if t.get("words")
                                else "")
        test_rows.append({
            "test": t["name"] or "", "metric": t["difference"] + (" (change since gen 0)" if t["change"] else "")
            + (" (relative)" if t["relative"] else ""),
            "arm": arm, "is expected": expect, "than": vs,
            "n": t["last"]["n"], "d at the generation [95% CI]": _interval_text(t["last"]),
            "bounds at the test's levels": _bounds_text(t), "p one-sided (as claimed)": _fmt(t["last"]["p_claim"], 2),
            "detectable |d| (80% power)": _fmt(t.get("detectable")),
            "d over the curve [95% CI]": "—" if t.get("kind") == "deceleration" else _interval_text(t["curve"]),
            "separates at gen (descriptive)": _separates_text(t["separates_at"]),
            "calibration": t["trust_note"] or "—", "verdict": reading(t) + ("" if t["votes"] else " (no vote)")
            + (" (incomplete)" if t.get("incomplete") else ""),
        })
    parts.append(page.table(list(test_rows[0]) if test_rows else [], test_rows))
    rules = sorted({f"supported if {t['rule'][SUPPORTED]}; contradicted if {t['rule'][CONTRADICTED]}"
                    for t in claim["tests"]})
    if claim.get("two_sided"):
        rules.append(f"two-sided: supported reads differs ({claim['two_sided'][0]}), contradicted differs "
                     f"({claim['two_sided'][1]})")
    parts.append("<p class=ci>d &gt; 0 means what the claim says; d is paired by seed (same seed, same generation 0 "
                 f"where arms share it). Rule: {page.esc(' / '.join(rules))}; else inconclusive. lo and hi are "
                 "one-sided t-bounds at the levels error control gives each metric; the 95% interval and 'separates "
                 "at' are descriptive.</p>")
    if figure is not None:
        parts.append(page.embedded_image(figure, f"{name} curves"))
    strips = []
    for arm in arms:
        chain = next((c for c in record["chains"] if c["arm"] == arm), None)
        strip = Path(root) / chain["run_dir"] / "collapse_strip.png" if chain else None
        if strip is not None and strip.exists():
            strips.append(f"<figure style='display:inline-block;margin:0 12px 8px 0'>"
                          f"{page.embedded_image(strip, arm)}<figcaption>{page.esc(arm)} (seed "
                          f"{chain['seed']})</figcaption></figure>")
    if strips:
        parts.append("<p>collapse strips (the same noise through every generation):</p><div class=grids>"
                     + "".join(strips) + "</div>")
    return "\n".join(parts)


def build_study_report(root: Path) -> dict[str, Any]:
    """Write study.csv, claims.json, one figure per claim and study.html in the study dir; returns claims.json."""
    root = Path(root)
    record = json.loads((root / STUDY_FILE).read_text())
    rows = read_rows(root, record)
    columns = ["arm", "seed", "shared_gen0"]
    for row in rows:
        columns += [c for c in row if c not in columns]
    atomic_write_text(root / "study.csv", csv_text(rows, columns))
    long = long_rows(rows)
    atomic_write_text(root / "study_long.csv", csv_text(long, list(LONG_COLUMNS)))
    atomic_write_text(root / "study_summary.csv", csv_text(summary_rows(long), list(SUMMARY_COLUMNS)))
    result = judge(rows, record, root, read_floors(root, record))
    result["preregistered"], result["plan_status"] = plan_status(record)
    if record["study"].get("null_study"):
        result["false_decisions"] = false_decisions(result)
    if not result["preregistered"]:
        for claim in result["claims"].values():
            claim["reanalysed"] = True
    result["runs"] = record.get("runs", [])
    result["missing"] = missing_chains(root, record)
    atomic_write_text(root / "claims.json", to_json(result))
    atomic_write_text(root / "claims.tex", claims_latex(result, caption=_caption(record, result)))

    sections = [("Claims", _claims_table(result))]
    arm_names = list(dict.fromkeys(c["arm"] for c in record["chains"]))
    colors = {arm: f"C{k % 10}" for k, arm in enumerate(arm_names)}  # an arm has one colour in every figure
    labels = sorted({label for claim in result["claims"].values() for by_label in scaling_curves(claim).values()
                     for label in by_label}, key=_natural)
    curve_colors = {label: f"C{k % 10}" for k, label in enumerate(labels)}  # a curve's colour in every figure
    for name, claim in result["claims"].items():
        arms = _claim_arms(claim)
        metrics = _claim_metrics(claim)
        bands = {m: b for m in metrics if (b := arm_bands(rows, arms, m))}
        figure = None
        curves = scaling_curves(claim)
        if curves:  # a scaling claim: its curves against pool size, not its arms against generation
            generation = next(t["generation"] for t in claim["tests"] if t.get("kind") == "scaling")
            figure = root / f"claim_{name}.png"
            save_figure(scaling_figure(curves, generation, colors=curve_colors), figure)
            save_paper_figures(lambda width, c=curves, g=generation: scaling_figure(c, g, width, curve_colors),
                               figure.with_suffix(""))
        elif bands:
            figure = root / f"claim_{name}.png"
            save_figure(sweep_figure(bands, colors), figure)
            save_paper_figures(lambda width, b=bands: sweep_figure(b, colors, width), figure.with_suffix(""))
        sections.append((f"Claim: {name}", _claim_section(root, name, claim, rows, record, figure)))
    headline = {m: b for m in HEADLINE if (b := arm_bands(rows, arm_names, m))}
    if headline:
        save_figure(sweep_figure(headline, colors), root / "study.png")
        save_paper_figures(lambda width: sweep_figure(headline, colors, width), root / "study")
        sections.append(("Every arm (mean and 95% interval across seeds)", page.embedded_image(root / "study.png",
                                                                                           "every arm")))
    filtered = filter_points(rows, arm_names, [m for m in HEADLINE if any(m in r for r in rows)])
    if filtered:
        save_figure(filter_figure(filtered), root / "filter_recall.png")
        sections.append(("Collapse against the filter's recall (one point per chain; an arm's mean ± its seeds' "
                         "sd)", page.embedded_image(root / "filter_recall.png", "collapse against filter recall")))
    sections.append(("Arms", _arms_table(root, record, rows)))
    intro = page.bullet_list([
        f"{len(arm_names)} arm(s) × {len(result['seeds'])} seed(s) ({', '.join(map(str, result['seeds']))}); "
        "bands and intervals are 95% t-intervals across seeds, n shown",
        "overrides for every arm: " + (" ".join(record.get("common_overrides") or []) or "none"),
        result["plan_status"],
        *([_false_text(result["false_decisions"])] if result.get("false_decisions") else []),
        *(f"run {i + 1}: {r['time']}, {r['seconds']:.0f} s, {r['chains_run']} chain(s) run"
          for i, r in enumerate(record.get("runs", []))),
    ]) + page.bullet_list(result["missing"], "missing")
    description = record["study"].get("description") or ""
    intro = (f"<p>{page.esc(description)}</p>" if description else "") + intro
    atomic_write_text(root / "study.html", page.document(f"imgcollapse study: {record['name']}", sections, intro))
    return result


def _caption(record: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    common = " ".join(record.get("common_overrides") or [])
    return (f"imgcollapse study {record['name']}{' (' + common + ')' if common else ''}: "
            f"{len(result['seeds'])} seeds ({', '.join(map(str, result['seeds']))}), paired differences across seeds; "
            "each claim one family at its level.")


def false_decisions(result: Mapping[str, Any]) -> dict[str, Any]:
    """For a study where no claim is true (study=null): how many claims, tests and voting metrics were decided anyway,
    each with its exact (Clopper-Pearson) 95% interval."""
    from scipy.stats import binomtest

    def rate(decided: int, total: int) -> dict[str, Any]:
        if not total:
            return {"decided": 0, "of": 0}
        ci = binomtest(decided, total).proportion_ci(0.95, method="exact")
        return {"decided": decided, "of": total, "rate": decided / total, "lo": ci.low, "hi": ci.high}

    claims = list(result["claims"].values())
    groups = [g for c in claims for g in c["groups"] if g["votes"]]
    metrics = [t for c in claims for t in c["tests"] if t["votes"]]
    undecided = "inconclusive"
    return {"claims": rate(sum(c["verdict"] != undecided for c in claims), len(claims)),
            "tests": rate(sum(g["verdict"] != undecided for g in groups), len(groups)),
            "metrics": rate(sum(t["verdict"] != undecided for t in metrics), len(metrics))}


def _false_text(found: Mapping[str, Any]) -> str:
    parts = []
    for what in ("claims", "tests", "metrics"):
        r = found[what]
        if r["of"]:
            parts.append(f"{r['decided']} of {r['of']} {what} decided ({100 * r['rate']:.0f}%, exact 95% interval "
                         f"{100 * r['lo']:.0f}–{100 * r['hi']:.0f}%)")
    return "no claim is true here (an A/A study): " + "; ".join(parts) + "; a metric is tested below its claim's level"


def missing_chains(root: Path, record: Mapping[str, Any]) -> list[str]:
    """One line per chain that has not reached its last generation (or failed)."""
    out = []
    for c in record["chains"]:
        run = Path(root) / c["run_dir"]
        done = RunStore(run).num_done() if run.is_dir() else 0
        failed = read_failed(run)
        if failed:
            out.append(f"{c['run_dir']}: failed (exit {failed[0]}): {failed[1]}")
        elif done <= c["generation"]:
            out.append(f"{c['run_dir']}: {done} of {c['generation'] + 1} generations finished")
    return out


def _claims_table(result: Mapping[str, Any]) -> str:
    rows = []
    for row in claim_summary(result):
        claim = row["claim"]
        tests = "; ".join(f"{g['name']}: {reading(g)}" for g in claim.get("groups", []))
        rows.append({"claim": row["name"], "statement": row["statement"],
                     "verdict": row["verdict"] + (" (incomplete: fewer seeds than planned)"
                                                  if claim.get("incomplete") else "")
                     + (" (re-analysed after the data)" if claim.get("reanalysed") else ""),
                     "level": _level_short(claim), "why": row["why"], "n seeds": row["n"], "its tests": tests})
    return page.table(["claim", "statement", "verdict", "level", "why", "n seeds", "its tests"], rows)


def _level_short(claim: Mapping[str, Any]) -> str:
    level = claim.get("level")
    how = "two-sided" if claim.get("two_sided") else claim["combine"]
    return "not stated" if level is None else f"{100 * level:.3g}% ({how})"


def _arms_table(root: Path, record: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    out = []
    for c in record["chains"]:
        run = Path(root) / c["run_dir"]
        link = f'<a href="{page.esc(c["run_dir"])}/report.html">report</a>' if (run / "report.html").exists() else ""
        arm_overrides = [o for o in c["overrides"]
                         if not o.startswith(("seed=", "generation=", "threads=", "report.draw="))]
        out.append({"chain": c["run_dir"], "overrides": " ".join(arm_overrides), "generations":
                    sum(1 for r in rows if r["arm"] == c["arm"] and r["seed"] == c["seed"]),
                    "generation 0": _generation0_source(run, root),
                    "report": link})
    return page.table(["chain", "overrides", "generations", "generation 0", "report"], out, raw=("report",))


def _generation0_source(run: Path, root: Path) -> str:
    """Where a chain's generation 0 came from, as its shared_gen0.json says (not as planned: an earlier plan may
    have trained it)."""
    path = run / "shared_gen0.json"
    if not path.exists():
        return "own" if (run / "gen_000" / "DONE").exists() else ""
    shared = json.loads(path.read_text())
    source = Path(shared.get("source", ""))
    where = source.relative_to(root.resolve()) if source.is_relative_to(root.resolve()) else source
    return f"{'model' if shared.get('shared') == 'model' else 'files'} of {where}"


def _markdown_interval(st: Mapping[str, Any]) -> str:
    """`3.3 [1.6, 5.0]`: the mean and its interval to the decimals the interval's width supports, with true minus
    signs."""
    mean, lo, hi = (number(st.get(k)) for k in ("mean", "lo95" if "lo95" in st else "lo", "hi95" if "hi95" in st
                                                 else "hi"))
    if mean is None:
        return "no seeds"
    if lo is None or hi is None:
        return f"{_fmt(mean)} (n={st.get('n')}: no interval)"
    half = (hi - lo) / 2
    decimals = max(0, 1 - math.floor(math.log10(half))) if half > 0 else 3
    return " ".join([f"{mean:.{decimals}f}", f"[{lo:.{decimals}f}, {hi:.{decimals}f}]"]).replace("-", "−")


def _arms_text(test: Mapping[str, Any]) -> str:
    """`self gen 2 vs self gen 0`, or `longtail gen 2: recall_tail vs recall_head` for a comparison of two metrics; a
    crossed design's four arms, a deceleration's two steps."""
    if test.get("kind") in ("crossed", "deceleration", "scaling"):
        return test["arms_text"]
    if test["vs_metric"] != test["metric"] and test["vs_arm"] == test["arm"]:
        return f"{test['arm']} gen {test['generation']}: {test['metric']} vs {test['vs_metric']}"
    return f"{test['arm']} gen {test['generation']} vs {test['vs_arm']} gen {test['vs_generation']}"


def claims_markdown(result: Mapping[str, Any]) -> str:
    """The claims as a Markdown table (the README's): a line per test of each claim, each metric's paired difference
    at the test's generation with its plain 95% interval, n, the claim's level and why it reads as it does;
    `python -m imgcollapse.report STUDY_DIR --markdown`."""
    lines = ["| claim | verdict (level) | test: verdict (arms) | d [95% CI] (d > 0: as claimed) | n |",
             "| --- | --- | --- | --- | --- |"]
    if result.get("false_decisions"):
        lines.insert(0, _false_text(result["false_decisions"]) + "\n")
    for claim in result["claims"].values():
        verdict = reading(claim) if claim["verdict"] == "inconclusive" else f"**{reading(claim)}**"
        verdict += f" ({_level_short(claim)})" + (" (re-analysed after the data)" if claim.get("reanalysed") else "")
        source = f" ({claim['source']})" if claim.get("source") else ""
        for i, group in enumerate(claim.get("groups", [])):
            metrics = [t for t in claim["tests"] if t.get("test") == i]
            first = metrics[0] if metrics else None
            arms = "" if first is None else _arms_text(first)
            numbers = "; ".join(f"{t['difference']}" + (" change" if t["change"] else "")
                                + (" relative" if t["relative"] else "") + f" {_markdown_interval(t['last'])}"
                                + ("" if t["votes"] else " (no vote)")
                                + (f" (detectable {_fmt(t['detectable'])})" if t["votes"] and t.get("detectable")
                                   is not None and t["verdict"] == "inconclusive" else "") for t in metrics)
            lines.append(f"| {claim['statement'] + source if i == 0 else ''} | {verdict if i == 0 else ''} | "
                         f"{group['name']}: {reading(group)} ({arms}) | {numbers} | "
                         f"{first['last']['n'] if first else 0} |")
        if claim.get("reason"):
            lines.append(f"| | | why: {claim['reason']} | | |")
    return "\n".join(lines)


def read_csv(path: Path) -> list[dict[str, str]]:
    """study.csv's rows (for scripts)."""
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))
