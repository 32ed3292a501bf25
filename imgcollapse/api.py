"""The kit from Python (a notebook): compose a config, run a chain, read its table, load a generation's model.

    import imgcollapse as ic
    cfg = ic.compose("debug=smoke", "model=gmm")            # the config `imgcollapse debug=smoke model=gmm` runs
    table = ic.run_chain(cfg)                               # trains into outputs/debug=smoke,model=gmm/, resumable
    table = ic.load_run("outputs/debug=smoke,model=gmm")    # pandas DataFrame (list of dicts without pandas)
    model = ic.load_model("outputs/debug=smoke,model=gmm", generation=2)
    images = model.sample(16, seed=0).images                # uint8 N×C×H×W
    long = ic.load_study("outputs/study/smoke")             # arm, seed, generation, metric, value (tidy)

`run_chain` runs the same code as the command line (same run dir, same resume checks, same files), in this
process; the command line is the way to run sweeps.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from imgcollapse.errors import UserError


def compose(*overrides: str) -> DictConfig:
    """The config `imgcollapse OVERRIDES` would run with, with its `hydra` node (the default run dir);
    `hydra.searchpath=[file:///abs/my_conf]` adds your own config groups."""
    from imgcollapse.config import compose as compose_config

    return compose_config(*overrides, return_hydra_config=True)


def run_chain(cfg: DictConfig, run_dir: str | Path | None = None) -> Any:
    """Train (or resume) the chain `cfg` describes in `run_dir` (default: the dir the command line would use,
    relative to the current directory); returns its table as `load_run` does. Raises the kit's errors
    (UserError for a bad config) instead of exiting."""
    from imgcollapse.run import run

    if run_dir is None:
        if "hydra" not in cfg:
            raise UserError("run_chain needs run_dir=... for a config composed without its hydra node "
                            "(imgcollapse.compose keeps it)")
        run_dir = str(cfg.hydra.run.dir)
    task = copy.deepcopy(cfg)
    if "hydra" in task:
        with open_dict(task):
            del task["hydra"]  # what Hydra hands the entry point: the job's config without Hydra's own node
    _log_to_stderr()
    run(task, Path(run_dir))
    return load_run(run_dir)


def load_run(run_dir: str | Path) -> Any:
    """The metric rows of a run's finished generations: a pandas DataFrame when pandas is installed, else a list
    of dicts (one per generation, the columns of metrics.csv)."""
    from imgcollapse.store import RunStore

    root = Path(run_dir)
    if not (root / "gen_000").is_dir() and not (root / "run.json").exists():
        raise UserError(f"{root} is not a run directory (no run.json, no gen_000/)")
    rows = RunStore(root).rows()
    try:
        import pandas
    except ImportError:  # pandas is optional: pip install 'imgcollapse[pandas]'
        return rows
    return pandas.DataFrame(rows)


def load_study(study_dir: str | Path, form: str = "long") -> Any:
    """A study's rows as a pandas DataFrame (a list of dicts without pandas): `form="long"` one row per arm, seed,
    generation and metric (`arm, seed, generation, metric, value`: seaborn's `hue="arm"`, `x="generation"`),
    `"wide"` study.csv's rows, `"summary"` per arm, generation and metric the mean across seeds with its 95%
    t-interval and n. Read from the chains on disk, so a study still running gives what has finished."""
    from imgcollapse.report.study import LONG_COLUMNS, STUDY_FILE, SUMMARY_COLUMNS, long_rows, read_rows, summary_rows

    root = Path(study_dir)
    if not (root / STUDY_FILE).is_file():
        raise UserError(f"{root} is not a study directory (no {STUDY_FILE}; imgcollapse-study writes it)")
    forms = ("long", "wide", "summary")
    if form not in forms:
        raise UserError(f"form={form!r} is not allowed: one of {', '.join(forms)}")
    rows = read_rows(root, json.loads((root / STUDY_FILE).read_text()))
    columns = None
    if form != "wide":
        rows, columns = long_rows(rows), list(LONG_COLUMNS)
        if form == "summary":
            rows, columns = summary_rows(rows), list(SUMMARY_COLUMNS)
    try:
        import pandas
    except ImportError:  # pandas is optional: pip install 'imgcollapse[pandas]'
        return rows
    return pandas.DataFrame(rows, columns=columns)  # the columns even before any chain has finished


def load_model(run_dir: str | Path, generation: int, accelerator: Any = None) -> Any:
    """The model generation `generation` of the run in `run_dir` trained, rebuilt by its class's `load` (a
    Population for chain.population); sample from it with `model.sample(n, seed=0)` (conditional models: `labels=`)."""
    from imgcollapse.config import target
    from imgcollapse.models.population import POPULATION_FILE, Population
    from imgcollapse.store import RESTORE, RunStore

    root = Path(run_dir)
    gen_dir = root / f"gen_{generation:03d}"
    if not (gen_dir / "DONE").exists():
        done = sorted(int(p.parent.name[4:]) for p in root.glob("gen_*/DONE"))
        raise UserError(f"generation {generation} of {root} is not finished (finished: "
                        f"{f'0..{done[-1]}' if done else 'none'})")
    store = RunStore(root)
    config = store.read_json(root / "run.json")["config"]
    family = store.read_json(gen_dir / "metrics.json", RESTORE.format(g=generation)).get("family")
    if family == "population" or (gen_dir / "model" / POPULATION_FILE).exists():
        return Population.load(gen_dir / "model", accelerator=accelerator)
    model_class = target("model", OmegaConf.create(_family_config(config, family, generation)))
    return model_class.load(gen_dir / "model", accelerator=accelerator)


def _family_config(config: dict[str, Any], family: str | None, generation: int) -> dict[str, Any]:
    """The model config generation `generation` trained with: its family's (chain.models) as config.family_configs
    picks it (`model` for `model`'s own kind, else `families.<name>`), or `model`."""
    from imgcollapse.config import model_kind, typed_component

    turns = (config.get("chain") or {}).get("models")
    if family is None and turns:  # a row without its family (written before the column): the schedule says
        family = turns[generation % len(turns)]
    families = config.get("families") or {}
    if family is None or family == "model" or family not in families:
        return config["model"]
    # `model`'s own kind wins over a family of the same name, as in family_configs
    own = model_kind(typed_component("model", dict(config["model"])))
    return config["model"] if family == own else families[family]


def _log_to_stderr() -> None:
    """A notebook has no logging set up: show the chain's progress lines, as the command line does."""
    logger = logging.getLogger("imgcollapse")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


__all__ = ["compose", "load_model", "load_run", "run_chain"]
