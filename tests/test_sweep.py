"""Real multiruns: a 2x2 joblib sweep (two regimes x two seeds) aggregated with bands, and a 2-job
submitit_local sweep, both started at the same moment from the same directory."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import REPO
from PIL import Image

from imgcollapse.report.plots import panel_grid_pixels
from imgcollapse.report.sweep import bands, build_sweep_report, collect, plot_columns

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

TINY = ("debug=smoke", "model=gmm", "threads=1")  # the GMM: what is tested is the sweep, not the model
JOBLIB = ("-m", *TINY, "generation=1", "regime=replace,accumulate", "seed=0,1", "hydra/launcher=joblib",
          "hydra.launcher.n_jobs=2")
SUBMITIT = ("-m", *TINY, "generation=0", "seed=0", "hydra/launcher=submitit_local")


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Both sweeps launched together from one directory, with the default sweep dir pattern."""
    cwd = tmp_path_factory.mktemp("multirun")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    procs = {}
    for name, args in (("joblib", JOBLIB), ("submitit", SUBMITIT)):
        log = open(cwd / f"{name}.log", "w")  # noqa: SIM115 - closed below
        procs[name] = (subprocess.Popen([sys.executable, "-m", "imgcollapse.run", *args], cwd=cwd, env=env,
                                        stdout=log, stderr=subprocess.STDOUT), log)
    for name, (proc, log) in procs.items():
        rc = proc.wait(timeout=600)
        log.close()
        assert rc == 0, (cwd / f"{name}.log").read_text()[-3000:]
    roots = {}
    for name in procs:
        match = re.search(r"sweep output dir : (\S+)", (cwd / f"{name}.log").read_text())
        roots[name] = cwd / match.group(1)
    return cwd, roots


def job_dirs(root):
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_sweeps_started_together_get_their_own_dirs(sweeps):
    cwd, roots = sweeps
    assert sorted(p.name for p in cwd.iterdir()) == ["joblib.log", "outputs", "submitit.log"]  # nothing else
    assert roots["joblib"] != roots["submitit"]
    assert sorted(p.name for p in (cwd / "outputs" / "multirun").iterdir()) == sorted(r.name for r in roots.values())
    for root in roots.values():
        assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}", root.name)  # microseconds: no collision


def test_joblib_jobs_write_only_to_their_own_dirs(sweeps):
    root = sweeps[1]["joblib"]
    jobs = job_dirs(root)
    assert [p.name for p in jobs] == [f"{i}_debug=smoke,model=gmm,regime={regime},seed={seed}" for i, (regime, seed) in
                                      enumerate([("replace", 0), ("replace", 1), ("accumulate", 0), ("accumulate", 1)])]
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == ["multirun.yaml", "sweep.csv", "sweep.html",
                                                                      "sweep.pdf", "sweep.png", "sweep.svg",
                                                                      "sweep_1col.pdf", "sweep_1col.svg"]
    for job in jobs:
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        config = yaml.safe_load((job / "run.json").read_text())["config"]
        regime = config["regime"]["_target_"].rsplit(".", 1)[1].lower()  # imgcollapse.regimes.Replace: replace
        assert str(config["seed"]) == overrides["seed"] and regime == overrides["regime"]
        assert [int(r["generation"]) for r in read_csv(job / "metrics.csv")] == [0, 1]
        assert (job / "report.html").exists() and (job / "collapse_strip.png").exists()
        assert "torch threads 1" in (job / "run.log").read_text()


def test_sweep_aggregation_rows_and_bands(sweeps):
    root = sweeps[1]["joblib"]
    build_sweep_report(root, runs=False)  # `python -m imgcollapse.report MULTIRUN_DIR --no-runs`
    rows = read_csv(root / "sweep.csv")
    assert len(rows) == 4 * 2  # jobs x generations
    assert list(rows[0])[:4] == ["job", "regime", "seed", "generation"]
    assert sorted((r["regime"], r["seed"], r["generation"]) for r in rows) == sorted(
        (regime, seed, g) for regime in ("accumulate", "replace") for seed in "01" for g in "01")
    sweep = collect(root)
    result = bands(sweep, ["fid", "num_train"])
    assert set(result["fid"]) == {"regime=replace", "regime=accumulate"}  # one line per regime; seeds averaged
    for regime in ("replace", "accumulate"):
        per_seed = [read_csv(job / "metrics.csv") for job in job_dirs(root) if f"regime={regime}," in job.name]
        fids = np.array([[float(r["fid"]) for r in job] for job in per_seed])  # seeds x generations
        g, mean, std, n = result["fid"][f"regime={regime}"]
        assert list(g) == [0, 1] and list(n) == [2, 2]
        assert np.allclose(mean, fids.mean(0)) and np.allclose(std, fids.std(0, ddof=1))
        assert (std > 0).all()  # two seeds really differ
    # accumulate keeps the real pool: its training set grows, replace's shrinks to the samples
    assert result["num_train"]["regime=accumulate"][1][1] > result["num_train"]["regime=replace"][1][1]
    assert Image.open(root / "sweep.png").size == panel_grid_pixels(len(plot_columns(sweep)))
    html = (root / "sweep.html").read_text()
    assert "regime=replace" in html and "regime=accumulate" in html and "<script" not in html
    assert html.count('/report.html">') == 4


def test_submitit_local_sweep_completes(sweeps):
    root = sweeps[1]["submitit"]
    jobs = job_dirs(root)
    assert [p.name for p in jobs] == ["0_debug=smoke,model=gmm,seed=0"]
    for job in jobs:
        assert (job / "gen_000" / "DONE").exists() and (job / "report.html").exists()
    assert len(read_csv(root / "sweep.csv")) == 1
    assert any((root / ".submitit").rglob("*_log.out"))  # submitit's own logs stay in the sweep dir
