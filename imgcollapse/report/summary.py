"""The one-line summary logged when a generation finishes: `gen 3/10  fid 41.2  recall 0.31  tail 0.42  38 s`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# (column, label, decimals): shown in this order when the row has the column and it is a finite number
SUMMARY_COLUMNS = (("fid", "fid", 1), ("recall", "recall", 2), ("tail_ratio", "tail", 2))


def summary_line(row: Mapping[str, Any], last_generation: int) -> str:
    """`gen G/N`, the summary columns the row has, and the generation's wall time."""
    parts = [f"gen {row['generation']}/{last_generation}"]
    for column, label, decimals in SUMMARY_COLUMNS:
        value = row.get(column)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            parts.append(f"{label} {value:.{decimals}f}")
    if isinstance(row.get("seconds"), (int, float)):
        parts.append(f"{row['seconds']:.0f} s")
    return "  ".join(parts)
