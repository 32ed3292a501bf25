"""Pictures and pages from a run directory: grids, the collapse strip, curves, the HTML report."""
