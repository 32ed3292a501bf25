"""Recorded results: the measured numbers the README, docs/ and the preset headers quote, each from a run.

A run's numbers are kept in a small file, `results/NAME.json` (the command, the kit's version, the metrics' ruler
version, the machine, the date and the numbers), written by `record-run`, `record-study`, `record-times` or
`record-output` (a command's printed table). A doc quotes one through a marker that renders invisibly in Markdown
and sits in a YAML comment as well:

    FID <!--r default_chain gen.0.fid-->8.52<!--/r-->             a number (3 significant digits; `KEY min`: a duration)
    <!--r claims_ddpm summary-->                                  a table the result holds, on the lines between
    ...
    <!--/r-->

`python -m imgcollapse.recorded write` puts every result's current text between its markers; `check` (and
tests/test_recorded.py) fails where a doc's text differs from its result, where a result was recorded under an older
ruler than the code's (`metric_facts.RULER_VERSION`), or where CITATION.cff's version is not the package's. A marker
is never left on a number of an older ruler: such a number is rerun and recorded, or it loses its marker and its
page or preset is listed, with its ruler, in docs/RESULTS.md. The module reads and writes a checkout (ROOT).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcollapse._version import __version__, version_line
from imgcollapse.errors import EXIT_DONE, EXIT_USER, EXIT_WRITE, UserError, WriteFailed, exit_codes_text
from imgcollapse.metric_facts import RULER_VERSION
from imgcollapse.report.header import machine
from imgcollapse.report.run_report import read_run, real_floor
from imgcollapse.report.study import build_study_report, claims_markdown, claims_summary_markdown
from imgcollapse.store import atomic_write_text

log = logging.getLogger("imgcollapse.recorded")

ROOT = Path(__file__).resolve().parent.parent  # the checkout: results/, README.md, docs/
RESULTS = "results"
DOCS = ("README.md", "docs/*.md", "imgcollapse/conf/experiment/*.yaml", "imgcollapse/conf/study/*.yaml")
MARKER = re.compile(r"<!--r (?P<name>[\w+,.-]+) (?P<key>[\w.:-]+)(?: (?P<fmt>\w+))?-->(?P<text>.*?)<!--/r-->",
                    re.DOTALL)
# the README's table of the default chain: these columns, with the 95% interval of those that have one
CHAIN_COLUMNS = ("fid", "fid_mean", "fid_cov", "precision", "recall", "coverage", "class_js", "near_copy_share",
                 "memorization_ratio")
CHAIN_INTERVALS = ("fid", "recall", "coverage", "memorization_ratio")


# Formatting -----------------------------------------------------------------------------------------------------
def number_text(value: Any, fmt: str | None = None) -> str:
    """A number as the docs print it: 3 significant digits (`8.52`, `71.5`, `0.089`, `1,400`), `min`: a duration
    (`12 min 5 s`), `int`: an integer with thousands separators, `pct`: a percentage, `gb`: bytes in GB; text as it
    is."""
    if isinstance(value, str) or value is None:
        return "" if value is None else value
    value = float(value)
    if not math.isfinite(value):
        return "—"
    if fmt == "min":
        minutes, seconds = divmod(round(value), 60)
        return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    if fmt == "int":
        return f"{round(value):,}"
    if fmt == "gb":
        return f"{value / 1e9:.2g} GB"
    if fmt == "pct":
        return f"{100 * value:.3g}%"
    value = float(f"{value:.3g}")  # 3 significant digits first, so 0.09996 reads 0.100 and 999.7 reads 1,000
    if value.is_integer() or abs(value) >= 1000:
        return f"{round(value):,}".replace("-", "−")
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}".replace("-", "−")


# Recording ------------------------------------------------------------------------------------------------------
def _machine() -> dict[str, Any]:
    return machine()


def _ruler_of(run_json: Mapping[str, Any], run_dir: Path) -> int:
    """The ruler a run's metrics were computed with: run.json's; for a run from before it was recorded, 4 when its
    rows have the column ruler 4 added (fid_mean_within), else refused."""
    invocation = run_json.get("invocation") or {}
    if invocation.get("ruler") is not None:
        return int(invocation["ruler"])
    first = Path(run_dir) / "gen_000" / "metrics.json"
    if first.exists() and "fid_mean_within" in json.loads(first.read_text()):  # ruler 4 added it, 5 recorded itself
        return 4
    raise UserError(f"{run_dir}: run.json records no metrics ruler and the run lacks what ruler {RULER_VERSION} "
                    "measures: its numbers cannot be recorded as this ruler's; rerun it")


def write_result(name: str, result: Mapping[str, Any]) -> Path:
    """results/NAME.json, atomically."""
    path = ROOT / RESULTS / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1, ensure_ascii=False, sort_keys=False) + "\n")
    return path


def _header(name: str, command: str, source: Path, ruler: int, machine: Mapping[str, Any], date: str,
            version: str | None = None) -> dict:
    """What every result records: the command, the kit version the run was made with, the ruler, machine, date."""
    return {"name": name, "command": command, "version": version or __version__, "ruler": ruler,
            "machine": dict(machine), "date": date, "source": str(source)}


def _per_class(column: str) -> bool:
    """Per-class columns (recall_class_3, class_freq_3) stay in the run's files, not in a result."""
    return "_class_" in column or column.startswith("class_freq_")


def record_run(name: str, run_dir: Path, command: str | None = None) -> dict[str, Any]:
    """A chain's numbers: every finished generation's scores (`gen.G.COLUMN`), their range over generations
    (`min.COLUMN`, `max.COLUMN`), the real floor (`floor.COLUMN`), the wall time of its generations (`seconds`) and
    the README's table (`table`)."""
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    if not record.done:
        raise UserError(f"{run_dir}: no finished generation to record")
    run_json = record.meta
    numbers: dict[str, Any] = {}
    for row in record.rows:
        for column, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not _per_class(column):
                numbers[f"gen.{row['generation']}.{column}"] = value
    for column in {c for r in record.rows for c in r}:  # the range over generations, for "stays at most ..."
        values = [r[column] for r in record.rows if isinstance(r.get(column), (int, float))
                  and not isinstance(r.get(column), bool) and math.isfinite(r[column])]
        if values and not _per_class(column):
            numbers[f"min.{column}"], numbers[f"max.{column}"] = min(values), max(values)
    floor = real_floor(record)
    numbers.update({f"floor.{c}": v for c, v in floor.items() if isinstance(v, (int, float))})
    numbers["seconds"] = sum(float(r.get("seconds") or 0) for r in record.rows)
    numbers["generations"] = len(record.rows)
    invocation = run_json.get("invocation") or {}
    result = _header(name, command or invocation.get("command", ""), run_dir, _ruler_of(run_json, run_dir),
                     invocation.get("machine") or _machine(), invocation.get("time", ""),
                     (run_json.get("versions") or {}).get("imgcollapse"))
    result["numbers"] = numbers
    result["tables"] = {"table": chain_table(record.rows, floor)}
    write_result(name, result)
    return result


def chain_table(rows: Sequence[Mapping[str, Any]], floor: Mapping[str, Any]) -> str:
    """The README's table of a chain: the real floor, then a row per generation, 95% intervals in parentheses."""
    columns = [c for c in CHAIN_COLUMNS if any(c in r for r in rows)]

    def cell(row: Mapping[str, Any], column: str) -> str:
        value = row.get(column)
        if not isinstance(value, (int, float)):
            return ""
        lo, hi = row.get(f"{column}_lo"), row.get(f"{column}_hi")
        interval = (f" ({number_text(lo)}–{number_text(hi)})" if column in CHAIN_INTERVALS
                    and isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else "")
        return number_text(value) + interval

    lines = ["| generation | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 1) + "|"]
    lines.append("| real floor | " + " | ".join(cell(floor, c) for c in columns) + " |")
    lines += [f"| {r['generation']} | " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def record_study(name: str, study_dir: Path, command: str | None = None, label: str | None = None) -> dict:
    """A study's numbers: each claim's verdict (`claim.NAME.verdict`), why (`claim.NAME.why`), n, the wall time of
    its invocations (`seconds`); tables: `summary` (claim, verdict, why) and `claims` (every test)."""
    study_dir = Path(study_dir)
    record = json.loads((study_dir / "study.json").read_text())
    if not record.get("chains"):
        raise UserError(f"{study_dir}: the study has no chains to record")
    result_json = build_study_report(study_dir)
    if result_json["missing"]:
        raise UserError(f"{study_dir}: {len(result_json['missing'])} chain(s) unfinished; finish the study first")
    rulers, machine, versions = [], None, set()
    for chain in record["chains"]:
        run_json = json.loads((study_dir / chain["run_dir"] / "run.json").read_text())
        rulers.append(_ruler_of(run_json, study_dir / chain["run_dir"]))
        machine = machine or (run_json.get("invocation") or {}).get("machine")
        versions.add((run_json.get("versions") or {}).get("imgcollapse") or "?")
    numbers: dict[str, Any] = {"seconds": sum(r["seconds"] for r in record.get("runs", [])),
                               "chains": len(record["chains"]), "seeds": len(result_json["seeds"]),
                               "generation": max(c["generation"] for c in record["chains"])}
    for key, claim in result_json["claims"].items():
        numbers[f"claim.{key}.verdict"] = claim["verdict"]
        if claim.get("direction"):  # a two-sided claim's verdict `differs` and the word of d's sign
            numbers[f"claim.{key}.direction"] = claim["direction"]
        numbers[f"claim.{key}.why"] = claim.get("reason", "")
    runs = record.get("runs") or [{}]
    default = " ".join(["imgcollapse-study", f"study={record['name']}", *record.get("common_overrides", [])])
    result = _header(name, command or default, study_dir, min(rulers), machine or _machine(), runs[-1].get("time", ""),
                     ", ".join(sorted(versions)))
    result["label"] = label or name
    result["numbers"] = numbers
    result["tables"] = {"summary": claims_summary_markdown(result_json), "claims": claims_markdown(result_json)}
    result["statements"] = {k: c["statement"] for k, c in result_json["claims"].items()}
    write_result(name, result)
    return result


def record_times(name: str, times_file: Path, command_note: str = "") -> dict[str, Any]:
    """Timed commands from a JSON-lines file ({"name", "command", "seconds", "rc", "date"} per line, as
    scripts/time_commands.sh writes it): `NAME.seconds` each, the last line of a name counting (a rerun appends);
    a command whose last run failed is refused. A line {"name", "value"} is a measured number (the .venv's size)."""
    numbers, commands, failed, date = {}, {}, {}, ""
    for line in Path(times_file).read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if "value" in entry:  # a measured size, not a command
            numbers[entry["name"]] = entry["value"]
            continue
        if entry.get("rc"):
            failed[entry["name"]] = entry
            continue
        failed.pop(entry["name"], None)
        numbers[f"{entry['name']}.seconds"] = entry["seconds"]
        commands[entry["name"]] = entry["command"]
        date = entry.get("date", date)
    if failed:
        entry = next(iter(failed.values()))
        raise UserError(f"{times_file}: {entry['command']!r} exited {entry['rc']} on its last run: a failed "
                        "command's time is not a measurement; rerun it")
    result = _header(name, command_note or "; ".join(commands.values()), Path(times_file), RULER_VERSION,
                     _machine(), date)
    result["commands"] = commands
    result["numbers"] = numbers
    write_result(name, result)
    return result


def record_output(name: str, command: Sequence[str]) -> dict[str, Any]:
    """A command's printed table (`python -m imgcollapse.verdicts.simulate`), run now with this code: its stdout as
    the table `output`, its wall time as `seconds`."""
    import subprocess
    import time

    began = time.perf_counter()
    argv = [sys.executable if i == 0 and a in ("python", "python3") else a for i, a in enumerate(command)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)  # this interpreter's kit
    if done.returncode:
        raise UserError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    result = _header(name, " ".join(command), Path("."), RULER_VERSION, _machine(),
                     datetime.datetime.now().isoformat(timespec="seconds"))
    result["numbers"] = {"seconds": time.perf_counter() - began}
    result["tables"] = {"output": done.stdout.strip()}
    write_result(name, result)
    return result


# Reading and writing the docs -------------------------------------------------------------------------------------
@dataclass
class Quote:
    """One marker in one doc."""

    path: Path
    name: str
    key: str
    fmt: str | None
    text: str
    start: int
    end: int
    begin: int  # where the marker itself starts

    def markdown_problem(self, doc: str) -> str | None:
        """Why a marker would not render in Markdown: an inline one at the start of a line is read as raw HTML
        (the paragraph breaks there), and one inside a fenced code block shows as text."""
        if sum(line.startswith("```") for line in doc[:self.begin].splitlines()) % 2:
            return "inside a code block, where Markdown shows the marker itself"
        if "\n" not in self.text and (self.begin == 0 or doc[self.begin - 1] == "\n"):
            return "at the start of a line, where Markdown reads it as raw HTML and breaks the paragraph"
        return None


def doc_paths(root: Path = ROOT) -> list[Path]:
    """The files whose numbers must come from results/: the README, docs/ and the config headers."""
    return sorted({p for pattern in DOCS for p in root.glob(pattern)})


def quotes(path: Path) -> Iterator[Quote]:
    """Every marker in a doc. Raises UserError where markers do not pair up (an unclosed or malformed one would
    otherwise swallow the text up to the next marker's end, or go unchecked)."""
    text = path.read_text()
    found = list(MARKER.finditer(text))
    opened, closed = text.count("<!--r "), text.count("<!--/r-->")
    bad = next((m for m in found if "<!--r " in m["text"]), None)
    if bad is not None or not opened == closed == len(found):
        line = text[: bad.start("text") if bad else 0].count("\n") + 1
        raise UserError(f"{path}: {opened} marker(s) opened, {closed} closed, {len(found)} well-formed"
                        + (f"; the one on line {line} is not closed before the next" if bad else "")
                        + ": each is <!--r NAME KEY[ FORMAT]-->text<!--/r-->")
    for m in found:
        yield Quote(path, m["name"], m["key"], m["fmt"], m["text"], m.start("text"), m.end("text"), m.start())


def load_results(root: Path = ROOT) -> dict[str, dict[str, Any]]:
    """Every results/NAME.json."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / RESULTS).glob("*.json"))}


def render(quote: Quote, results: Mapping[str, Mapping[str, Any]]) -> str:
    """What a marker's text should be. Raises KeyError naming what is missing."""
    names = quote.name.split("+")
    if quote.name == "all" and quote.key == "index":
        return "\n" + index_table(results) + "\n"
    if len(names) > 1 and quote.key == "verdicts":
        return "\n" + verdicts_table([results[n] for n in names]) + "\n"
    result = results[quote.name]
    if quote.key in result.get("tables", {}):
        return "\n" + result["tables"][quote.key] + "\n"
    if quote.key in ("version", "ruler", "command"):
        return str(result[quote.key])
    if quote.key == "date":
        return str(result["date"])[:10]
    return number_text(result["numbers"][quote.key], quote.fmt)


def verdicts_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Claims down, studies across: each claim's verdict in each study (the README's and STUDIES' comparison)."""
    keys = list(dict.fromkeys(k for r in results for k in r.get("statements", {})))
    head = "| claim | " + " | ".join(f"{r.get('label', r['name'])} (n = {r['numbers']['seeds']} seeds, generations "
                                     f"0..{r['numbers']['generation']})" for r in results) + " |"
    lines = [head, "| --- " * (len(results) + 1) + "|"]
    for key in keys:
        statement = next(r["statements"][key] for r in results if key in r.get("statements", {}))
        cells = [(r["numbers"].get(f"claim.{key}.verdict", ""), r["numbers"].get(f"claim.{key}.direction"))
                 for r in results]
        lines.append(f"| {statement} | " + " | ".join(
            (f"**{v}**" if v in ("supported", "contradicted", "differs") else v) + (f" ({d})" if d else "")
            for v, d in cells) + " |")
    return "\n".join(lines)


def index_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """docs/RESULTS.md's list: every recorded result, its command, version, ruler, machine and date."""
    lines = ["| result | command | kit | ruler | machine | date |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        machine = r.get("machine") or {}
        stale = "" if r["ruler"] == RULER_VERSION else " (older than the code's)"
        cpu = f" ({machine['cpu']})" if machine.get("cpu") else ""
        lines.append(f"| `{name}` | `{r['command']}` | {r['version']} | {r['ruler']}{stale} | {machine.get('cpus')} "
                     f"CPU cores{cpu}{', GPU ' + machine['gpu'] if machine.get('gpu') else ''} | {r['date'][:10]} |")
    return "\n".join(lines)


def problems(root: Path = ROOT) -> list[str]:
    """Every doc number that does not match its result, every quoted result of an older ruler, every missing one,
    and CITATION.cff's version if it is not the package's."""
    results = load_results(root)
    found = []
    for path in doc_paths(root):
        doc = path.read_text()
        try:
            found_quotes = list(quotes(path))
        except UserError as e:
            found.append(str(e))
            continue
        for q in found_quotes:
            where = f"{path.relative_to(root)}: <!--r {q.name} {q.key}-->"
            if path.suffix == ".md" and (why := q.markdown_problem(doc)):
                found.append(f"{where}: {why}")
            try:
                wanted = render(q, results)
            except KeyError as e:
                found.append(f"{where}: no recorded {e} (results/{q.name}.json)")
                continue
            for name in q.name.split("+") if q.name != "all" else []:
                if results[name]["ruler"] != RULER_VERSION:
                    found.append(f"{where}: results/{name}.json was recorded under ruler {results[name]['ruler']}, "
                                 f"the code's is {RULER_VERSION}: rerun `{results[name]['command']}` and record it")
            if q.text != wanted:
                found.append(f"{where} says {q.text.strip()[:60]!r}, its result says {wanted.strip()[:60]!r}: "
                             "python -m imgcollapse.recorded write")
    citation = root / "CITATION.cff"
    if citation.exists():
        cited = re.search(r"^version:\s*(\S+)", citation.read_text(), re.M)
        if not cited or cited.group(1) != __version__:
            found.append(f"CITATION.cff: version {cited.group(1) if cited else None}, the package's is {__version__}: "
                         "python -m imgcollapse.recorded write")
    return found


def write_docs(root: Path = ROOT, missing: list[str] | None = None) -> list[Path]:
    """Put every result's current text between its markers, and the package's version in CITATION.cff; returns
    the files changed. A marker with no recorded value keeps its text and is appended to `missing`."""
    results = load_results(root)
    changed = []
    for path in doc_paths(root):
        text = path.read_text()
        out, last = [], 0
        for q in quotes(path):
            try:
                wanted = render(q, results)
            except KeyError as e:
                (missing if missing is not None else []).append(f"{path.relative_to(root)}: <!--r {q.name} "
                                                                  f"{q.key}--> has no recorded {e}")
                continue
            out += [text[last:q.start], wanted]
            last = q.end
        new = "".join(out) + text[last:]
        if new != text:
            path.write_text(new)
            changed.append(path)
    citation = root / "CITATION.cff"
    if citation.exists():
        text = citation.read_text()
        new = re.sub(r"^version:.*$", f"version: {__version__}", text, flags=re.M)
        if new != text:
            citation.write_text(new)
            changed.append(citation)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgcollapse.recorded", description=__doc__.split("\n")[0],
                                     epilog=exit_codes_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line("imgcollapse.recorded"))
    sub = parser.add_subparsers(dest="what", required=True)
    run = sub.add_parser("record-run", help="record a chain's numbers: NAME RUN_DIR")
    study = sub.add_parser("record-study", help="record a study's verdicts and tables: NAME STUDY_DIR")
    times = sub.add_parser("record-times", help="record timed commands: NAME TIMES.jsonl")
    for p in (run, study, times):
        p.add_argument("name")
        p.add_argument("path", type=Path)
        p.add_argument("--command", default=None, help="the command as the docs state it")
    study.add_argument("--label", default=None, help="the study's name in a comparison table")
    output = sub.add_parser("record-output", help="run a command and record the table it prints: NAME -- COMMAND...")
    output.add_argument("name")
    output.add_argument("run", nargs=argparse.REMAINDER, help="the command (after --)")
    sub.add_parser("write", help="write every result into the docs")
    sub.add_parser("check", help="list every doc number that does not match its result (exit 2 if any)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.what == "record-run":
            record_run(args.name, args.path, args.command)
        elif args.what == "record-study":
            record_study(args.name, args.path, args.command, args.label)
        elif args.what == "record-times":
            record_times(args.name, args.path, args.command or "")
        elif args.what == "record-output":
            command = [a for a in args.run if a != "--"] or parser.error("record-output needs a command after --")
            record_output(args.name, command)
        elif args.what == "write":
            missing: list[str] = []
            for path in write_docs(missing=missing):
                log.info("wrote %s", path.relative_to(ROOT))
            for line in missing:
                log.error("%s", line)
            return EXIT_USER if missing else EXIT_DONE
        else:
            found = problems()
            for line in found:
                log.error("%s", line)
            return EXIT_USER if found else EXIT_DONE
    except (UserError, OSError) as e:
        log.error("%s", e)
        return EXIT_WRITE if isinstance(e, WriteFailed) else EXIT_USER
    log.info("recorded results/%s.json", args.name)
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
