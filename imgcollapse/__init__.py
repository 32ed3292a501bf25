"""imgcollapse: train each generation of an image generator on the last one's output and measure what is lost.

From Python: `compose`, `run_chain`, `load_run`, `load_model` (imgcollapse/api.py), imported on first use so that
`import imgcollapse` stays cheap (no torch).
"""

from __future__ import annotations

from typing import Any

from imgcollapse._version import __version__

__all__ = ["__version__", "compose", "load_model", "load_run", "run_chain"]
_API = ("compose", "load_model", "load_run", "run_chain")


def __getattr__(name: str) -> Any:
    if name in _API:
        from imgcollapse import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgcollapse' has no attribute {name!r}")
