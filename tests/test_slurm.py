"""`hydra/launcher=slurm` against a real Slurm: a one-node cluster on this machine (scripts/slurm_local.sh) runs a
tiny study's chains as Slurm jobs, to the same claims.json and numbers as the local launcher; and a chain cancelled
midway with `scancel` resumes after its last finished generation. Skipped where no local Slurm can start (no
`sbatch`, not root, no submitit plugin, daemons that do not come up)."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # runs studies through Slurm: not in `make test-fast`

SCRIPT = REPO / "scripts" / "slurm_local.sh"
SLURM = ("hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10")
COMMON = ("study.launcher=basic", "study.draw=none", "study.threads=1")  # one torch thread under either launcher
TIMING = re.compile(r"(^|_)seconds$")  # study.csv's wall-clock columns: the only ones two runs may differ in

# Two arms, one seed, generations 0-1: accumulate adopts replace's generation 0, so the cluster path runs both of
# its stages (the shared generation 0 first, then every chain)
TINY = """name: slurm_tiny
seeds: 1
generation: 1
overrides: [model=gmm, debug=smoke]
arms:
  replace: [regime=replace]
  accumulate: [regime=accumulate]
claims:
  accumulation_helps:
    statement: Accumulating keeps recall higher than replacing
    tests:
      - {arm: accumulate, vs_arm: replace, metrics: [recall, fid], expect: better}
"""
# One chain, cancelled after generation 1
LONG = """name: slurm_long
seeds: 1
generation: 40
overrides: [model=gmm, debug=smoke]
arms:
  replace: [regime=replace]
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running one-node Slurm; its dir. Started here unless it already ran, and then stopped once no pytest-xdist
    worker of this session uses it any more."""
    if shutil.which("sbatch") is None:
        pytest.skip("no sbatch on PATH (apt-get install -y slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("scripts/slurm_local.sh needs root to start slurmd")
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("hydra-submitit-launcher missing (pip install 'imgcollapse[cluster]')")
    from filelock import FileLock

    local = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm_local"))
    base = tmp_path_factory.getbasetemp()  # the session's dir: every xdist worker's base is a child of it
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    users, ours = base / "slurm_local.users", base / "slurm_local.ours"
    with FileLock(str(base / "slurm_local.lock")):
        try:
            started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=90,
                                     env={**os.environ, "SLURM_LOCAL_TIMEOUT": "30"})
        except subprocess.TimeoutExpired:
            subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=60)
            pytest.skip("local Slurm did not start within 90 s (scripts/slurm_local.sh start)")
        if started.returncode != 0:
            reason = (started.stderr.strip().splitlines() or ["no output"])[-1].removeprefix("slurm_local: ")
            pytest.skip(f"local Slurm did not start: {reason}")
        if "already running" not in started.stdout:
            ours.touch()  # this session started it: its last user stops it
        users.write_text(str(int(users.read_text() if users.exists() else 0) + 1))
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(local / "slurm.conf")  # what sbatch, squeue and scancel read
    yield local
    with FileLock(str(base / "slurm_local.lock")):
        left = int(users.read_text()) - 1
        users.write_text(str(left))
        if left == 0 and ours.exists():
            subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=60)
            ours.unlink()
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved


def study_args(tmp_path: Path, text: str) -> tuple[str, str]:
    """`study=NAME` for a study file written to tmp_path/conf/study/, and the override that lets Hydra find it."""
    name = text.split("\n", 1)[0].removeprefix("name: ")
    (tmp_path / "conf" / "study").mkdir(parents=True)
    (tmp_path / "conf" / "study" / f"{name}.yaml").write_text(text)
    return f"study={name}", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


def study_command(root: Path, study: tuple[str, str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgcollapse.study", *study, *COMMON, f"study.dir={root}", *extra]


def run_study(root: Path, study: tuple[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(study_command(root, study, *extra), cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def job_logs(root: Path) -> dict[str, str]:
    """{Slurm job id: its submitit stdout} from the study's submitit folder (hydra.sweep.dir/.submitit)."""
    logs = {}
    for out in sorted((root / ".submitit").glob("*/*_log.out")):
        text = out.read_text()
        if found := re.search(r"JobEnvironment\(job_id=([0-9_]+),", text):
            logs[found.group(1)] = text
    return logs


def numbers(root: Path) -> list[dict[str, str]]:
    """study.csv without its wall-clock columns."""
    rows = list(csv.DictReader(io.StringIO((root / "study.csv").read_text())))
    return [{k: v for k, v in r.items() if not TIMING.search(k)} for r in rows]


def test_a_study_runs_its_chains_as_slurm_jobs_to_the_local_launchers_claims(slurm: Path, tmp_path: Path) -> None:
    study = study_args(tmp_path, TINY)
    local, cluster = tmp_path / "tiny_local", tmp_path / "tiny_slurm"
    result = run_study(cluster, study, *SLURM)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = job_logs(cluster)
    assert len(logs) == 3, sorted(logs)  # replace's generation 0 first (the one accumulate adopts), then each chain
    first, *rest = sorted(logs, key=lambda job: [int(n) for n in job.split("_")])
    assert f"run dir {cluster / 'replace/seed_0'} " in logs[first] and "gen 0/0 " in logs[first]
    for chain in ("replace/seed_0", "accumulate/seed_0"):  # every chain ran in a job of the last stage
        assert [job for job in rest if f"run dir {cluster / chain} " in logs[job]], chain
    assert all("Job completed successfully" in text for text in logs.values())
    assert not json.loads((cluster / "claims.json").read_text())["missing"]

    result = run_study(local, study)  # the same study, one chain at a time in this process
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (local / ".submitit").exists()
    expected = json.loads((local / "claims.json").read_text())
    got = json.loads((cluster / "claims.json").read_text())
    assert got["claims"] == expected["claims"]  # verdicts, intervals and per-seed values, exactly
    assert numbers(cluster) == numbers(local)


def done_files(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """{path: (mtime in ns, bytes)} of every file of the finished generations."""
    files = {}
    for gen in sorted(run_dir.glob("gen_[0-9][0-9][0-9]")):
        if (gen / "DONE").exists():
            for f in sorted(p for p in gen.rglob("*") if p.is_file()):
                files[str(f.relative_to(run_dir))] = (f.stat().st_mtime_ns, f.read_bytes())
    return files


def queued(job: str) -> bool:
    listed = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True, timeout=30)
    return job in listed.stdout


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < timeout, f"{what} within {timeout:.0f} s"
        time.sleep(0.1)


def test_a_chain_cancelled_midway_resumes_after_its_last_finished_generation(slurm: Path, tmp_path: Path) -> None:
    study = study_args(tmp_path, LONG)
    root = tmp_path / "long"
    chain = root / "replace" / "seed_0"
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(study_command(root, study, *SLURM), cwd=REPO, stdout=log, stderr=log,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        wait_for(lambda: (chain / "gen_001" / "DONE").exists() or first.poll() is not None, 180,
                 "generation 1 finished")
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        job = next(iter(job_logs(root)))
        # Slurm sends TERM, which submitit ignores, then KILL after KillWait (0 s in slurm_local.sh's config: with
        # a cluster's 30 s these sub-second generations would all finish first): the chain stops where it is
        subprocess.run(["scancel", job], check=True, timeout=30)
        before = done_files(chain)  # what had finished when the job was cancelled
        wait_for(lambda: not queued(job), 60, f"job {job} gone after scancel")
    finally:  # the launcher waits on the job's result (this cluster keeps no accounting for it to see the cancel)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        log.close()
    gone = done_files(chain)  # and once it was gone
    last = max(int(name[4:7]) for name in gone)
    assert last < 40, "the job finished every generation before the cancel took: raise LONG's generation"

    result = run_study(root, study, *SLURM)  # the same command again
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(int(p.parent.name[4:]) for p in chain.glob("gen_*/DONE")) == list(range(41))
    resumed = [text for job_id, text in job_logs(root).items() if job_id != job]
    assert len(resumed) == 1 and f"resuming {chain} after generation {last}" in resumed[0]
    after = done_files(chain)
    assert before.keys() <= gone.keys() <= after.keys()
    assert {k: after[k] for k in gone} == gone  # not retrained: the same bytes, the same mtimes
    rows = [json.loads(line) for line in (chain / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == list(range(41))
