"""The kit's version: one home, read by the package, the run record and the build (pyproject.toml)."""

__version__ = "0.4.0"
