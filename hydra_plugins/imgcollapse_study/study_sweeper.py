"""`hydra/sweeper=imgcollapse_study`: launch the jobs a study planned, each its own list of overrides.

Hydra's basic sweeper launches the cartesian product of comma-separated values; a study's arms are sets of
overrides that do not form a grid (arm A sets regime=accumulate, arm B regime.curation=verify). This sweeper
reads the jobs from `jobs_file` (JSON: a list of override lists, written by `python -m imgcollapse.study`), adds
the command line's overrides in front of each, and hands them all to the configured launcher (basic, joblib,
submitit), which runs them as any sweep's jobs. It is a Hydra plugin (it must live in the `hydra_plugins`
namespace for Hydra to instantiate it); `imgcollapse.study` is its only intended caller.
"""

# no `from __future__ import annotations`: Hydra executes plugin modules without registering them in sys.modules,
# and a dataclass with string annotations looks its module up there
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035  (OmegaConf reads these; see above)

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig

log = logging.getLogger(__name__)


@dataclass
class StudySweeperConf:
    _target_: str = "hydra_plugins.imgcollapse_study.study_sweeper.StudySweeper"
    jobs_file: str = MISSING  # JSON list of override lists, one per job
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045  a preset's `-m` grid: unused by a study


ConfigStore.instance().store(group="hydra/sweeper", name="imgcollapse_study", node=StudySweeperConf,
                             provider="imgcollapse")


class StudySweeper(Sweeper):
    """Launch a fixed list of jobs (each a list of overrides) in one batch through the configured launcher."""

    def __init__(self, jobs_file: str, params: Optional[Dict[str, str]] = None) -> None:  # noqa: UP006, UP045
        self.jobs_file = Path(jobs_file)
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        jobs = json.loads(self.jobs_file.read_text())
        if not (isinstance(jobs, list) and all(isinstance(j, list) for j in jobs)):
            raise ValueError(f"{self.jobs_file}: expected a JSON list of override lists")
        log.info("study: launching %d chain(s)", len(jobs))
        return self.launcher.launch([list(arguments) + [str(o) for o in job] for job in jobs], initial_job_idx=0)
