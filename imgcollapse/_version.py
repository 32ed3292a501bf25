"""The kit's version: one home, read by the package, the run record, CITATION.cff's test and the build."""

__version__ = "0.4.0"


def version_line(command: str = "imgcollapse") -> str:
    """What `--version` prints on every command: the kit's version and its metrics' ruler version."""
    import platform

    from imgcollapse.metric_facts import RULER_VERSION

    return f"{command} {__version__} (metrics ruler {RULER_VERSION}, Python {platform.python_version()})"
