"""Self-contained HTML pages: images embedded as base64, inline CSS, no script, no network."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MIME = {".png": "image/png", ".gif": "image/gif"}
CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 12px; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; }
th { background: #f4f4f4; position: sticky; top: 0; } td { text-align: right; font-variant-numeric: tabular-nums; }
td.text { text-align: left; } .scroll { overflow-x: auto; } img { image-rendering: pixelated; max-width: 100%; }
.missing { color: #a40; }
.ci { color: #888; font-size: 10px; }
.grids img { margin: 0 8px 8px 0; vertical-align: top; } pre { background: #f7f7f7;
padding: 1em; overflow-x: auto; font-size: 12px; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def embedded_image(path: Path, alt: str) -> str:
    """An <img> whose source is the file itself, base64-encoded, so the page opens anywhere."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:{MIME[Path(path).suffix]};base64,{data}" alt="{esc(alt)}">'


def _is_number(value: Any) -> bool:
    if value is None or value == "" or isinstance(value, (bool, int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def format_value(value: Any) -> str:
    """A table cell: integers as they are, other numbers to 4 significant digits, empty for missing."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return esc(value)
    if not math.isfinite(number):
        return ""
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else f"{number:.4g}"


def table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], raw: Sequence[str] = ()) -> str:
    """An HTML table of `rows` with one column per name in `columns`; `raw` columns hold HTML already."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            if c in raw:
                cells.append(f"<td class=text>{value or ''}</td>")
                continue
            cells.append(f"<td{'' if _is_number(value) else ' class=text'}>{format_value(value)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def bullet_list(items: Sequence[str], css: str = "") -> str:
    if not items:
        return ""
    cls = f' class="{css}"' if css else ""
    return f"<ul{cls}>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def document(title: str, sections: Sequence[tuple[str, str]], intro: str = "") -> str:
    """A whole page: a title, an intro paragraph and (heading, html body) sections."""
    parts = [f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>{esc(title)}</h1>", intro]
    for heading, body in sections:
        if body:
            parts.append(f"<h2>{esc(heading)}</h2>\n{body}")
    parts.append("</body></html>\n")
    return "\n".join(parts)
