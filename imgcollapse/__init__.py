"""imgcollapse: train each generation of an image generator on the last one's output and measure what is lost.

From Python: `compose`, `run_chain`, `load_run`, `load_study`, `load_model` (imgcollapse/api.py), imported on first
use so that `import imgcollapse` stays cheap (no torch).
"""

from __future__ import annotations

import sys
from typing import Any

if sys.version_info < (3, 10):  # noqa: UP036  the kit's code uses 3.10 syntax: say so before a SyntaxError would
    raise ImportError(f"imgcollapse needs Python >= 3.10; this is {sys.version.split()[0]} ({sys.executable})")

from imgcollapse._version import __version__  # noqa: E402

__all__ = ["__version__", "compose", "load_model", "load_run", "load_study", "run_chain"]
_API = ("compose", "load_model", "load_run", "load_study", "run_chain")


def __getattr__(name: str) -> Any:
    if name in _API:
        from imgcollapse import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgcollapse' has no attribute {name!r}")
