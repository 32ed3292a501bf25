"""`imgcollapse-calibrate [--out DIR] [overrides]` (or `python -m imgcollapse.calibrate`): which metric sees which
change on your data.

Applies graded blur, noise, contrast loss, class dropping, class skew, duplication and contraction to real images no
model or classifier trained on, scores each like a generation, and writes calibration.json and calibration.png
(imgcollapse/metrics/calibration.py says how, and the verdict rule). Overrides are the run's (`dataset=mnist`,
`metrics.extractors=[classifier,inception]`); the result is cached per dataset and feature space, so a run on the
same data reads it instead of computing it again. Exit status 2 on a bad override.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from imgcollapse._version import version_line
from imgcollapse.cli import describe_config_error
from imgcollapse.config import build, compose, validate, validate_data
from imgcollapse.errors import EXIT_DONE, EXIT_USER, EXIT_WRITE, UserError, WriteFailed, exit_codes_text
from imgcollapse.metrics import setup_metrics
from imgcollapse.metrics.calibration import FIGURE, FILE, SEES, load_or_calibrate, write_json
from imgcollapse.report.plots import calibration_figure, save_figure

log = logging.getLogger("imgcollapse.calibrate")


def run_calibration(overrides: list[str], out: Path | None = None) -> tuple[Path, dict]:
    """Compose the config from `overrides`, set up its metrics, calibrate (or read the cache) and write
    calibration.json and calibration.png to `out` (default: outputs/calibration/<dataset>-<key>)."""
    config = validate(compose(*overrides))
    splits = build(config.dataset)
    validate_data(config, len(splits.train), splits.train.num_classes if splits.train.labels is not None else None)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cache = Path(config.cache_dir).expanduser()
    metrics = setup_metrics(splits, cache, config.metrics, seed=config.seed, device=device,
                            num_scored=config.metrics.num_samples or config.num_synthetic)
    if not metrics.spaces:
        raise UserError("no feature extractor is available for this dataset (see the warnings above): "
                        "nothing to calibrate")
    result = load_or_calibrate(splits, metrics, cache)
    name = config.dataset._target_.rsplit(".", 1)[-1].removeprefix("load_")
    out = out or Path("outputs") / "calibration" / f"{name}-{result['key']}"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / FILE, result)
    save_figure(calibration_figure(result), out / FIGURE)
    return out, result


def refresh(run_dir: Path) -> dict:
    """A chain's calibration.json computed again by this code from the chain's own overrides (after a calibration
    version change; the calibration reads real images only, so the chain's results are not involved)."""
    import yaml

    overrides_file = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise UserError(f"{run_dir}: no .hydra/overrides.yaml: not a run directory of imgcollapse.run")
    overrides = [o for o in yaml.safe_load(overrides_file.read_text()) or [] if not o.startswith(("hydra", "~hydra"))]
    config = validate(compose(*overrides))
    splits = build(config.dataset)
    cache = Path(config.cache_dir).expanduser()
    metrics = setup_metrics(splits, cache, config.metrics, seed=config.seed, device="cpu",
                            num_scored=config.metrics.num_samples or config.num_synthetic)
    result = load_or_calibrate(splits, metrics, cache)
    write_json(Path(run_dir) / FILE, result)
    log.info("%s: calibration.json refreshed (version %s, key %s)", run_dir, result["version"], result["key"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgcollapse-calibrate",
                                     description="Which metric sees which change on your data.",
                                     epilog=exit_codes_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line("imgcollapse-calibrate"))
    parser.add_argument("--out", type=Path, default=None, help="where calibration.json and .png go")
    parser.add_argument("--refresh", type=Path, nargs="+", default=None, metavar="RUN_DIR",
                        help="compute these chains' calibration.json again with this code, from their own overrides")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for python -m imgcollapse.run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.refresh:
            for run_dir in args.refresh:
                refresh(run_dir)
            return EXIT_DONE
        out, result = run_calibration(args.overrides, args.out)
    except UserError as e:
        log.error("%s", e)
        return EXIT_USER
    except WriteFailed as e:
        log.error("%s. Free space (or fix the error) and run the command again", e)
        return EXIT_WRITE
    except Exception as e:  # Hydra's composition errors: an unknown key or group, a wrong type
        if type(e).__module__.startswith(("hydra", "omegaconf")):
            log.error("%s", describe_config_error(e))
            return EXIT_USER
        raise
    width = max(len(c) for c in result["sees"])
    lines = [f"{c:<{width}}  {', '.join(ch) or '— (sees none of the changes)'}" for c, ch in result["sees"].items()]
    log.info("which changes each metric sees (%s) on %d real images:\n%s", SEES, result["size"], "\n".join(lines))
    log.info("wrote %s and %s (computed in %.1f s)", out / FILE, out / FIGURE, result["seconds"])
    json.dumps(result)  # fail here, not in a reader, if the result is not plain JSON
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
