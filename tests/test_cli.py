"""The command line a user meets: Hydra's composition errors as one line with exit status 2 and the closest valid
name, Ctrl-C as exit 130 with what was kept, sweeps that outlive a failed job and resume in their sweep dir, and
one list of the keys that are not part of a run's identity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

from imgcollapse.config import compose, not_identity
from imgcollapse.resume import IGNORED

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

TINY = ("debug=smoke", "model=gmm", "threads=1", "report.draw=false")


@pytest.mark.parametrize(("overrides", "expected"), [
    (("modle=gmm",), "unknown key 'modle' (did you mean 'model'?)"),
    (("model=gmmm",), "model=gmmm is not a model option (did you mean 'gmm'?); one of: ddpm, gmm, vae"),
    (("model=gmm", "model.n_component=3"), "unknown key 'model.n_component' (did you mean 'n_components'?)"),
    (("seed=abc",), "seed=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    (("experiment=shumailov",), "experiment=shumailov is not a experiment option (did you mean 'shumailov_vae'?)"),
    (("seed=[",), "cannot parse the command line"),
])
def test_a_composition_error_is_one_line_with_exit_2(tmp_path: Path, overrides: tuple[str, ...], expected: str) -> None:
    result = run_cli(*overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert expected in output, output[-2000:]
    assert "Traceback" not in output and "Set the environment variable HYDRA_FULL_ERROR" not in output
    assert len([line for line in output.splitlines() if line.strip()]) == 1, output
    assert not (tmp_path / "run").exists()


def test_ctrl_c_exits_130_and_says_what_was_kept(tmp_path: Path) -> None:
    """SIGINT once generation 0 is done: exit 130, one line naming the finished generations; the same command
    then resumes after them."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "imgcollapse.run", *TINY, "generation=500", f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    log_file = tmp_path / "output.log"  # a file, not a pipe: a full pipe nobody reads would stall the child
    with log_file.open("w") as sink:
        # SIGINT as a terminal delivers it, even where this test runs with it ignored (`nohup make test &`): Python
        # keeps an inherited SIG_IGN, and the child would never see the Ctrl-C
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 240
        while not (run_dir / "gen_001" / "DONE").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    output = log_file.read_text()
    assert proc.returncode == 130, output[-3000:]
    line = next(x for x in output.splitlines() if "interrupted:" in x)
    assert f"are finished and kept in {run_dir}" in line and "Rerun the same command to resume" in line
    assert "Traceback" not in output
    done = sorted(p.parent.name for p in run_dir.glob("gen_*/DONE"))
    assert done and done == [f"gen_{g:03d}" for g in range(len(done))]
    assert f"generations 0..{len(done) - 1} are finished" in line
    assert not (run_dir / "run.lock").exists() or "lock" not in output.lower()


def test_a_failed_sweep_job_is_marked_the_others_run_and_the_sweep_resumes(tmp_path: Path) -> None:
    """Job 0 asks for more mixture components than the data has (a user error found once the data is loaded);
    job 1 still runs, the sweep report lists job 0 as failed, and the command exits 2. Rerunning the sweep in its
    dir with a later generation resumes job 1 in the same job dir."""
    sweep_dir = tmp_path / "sweep"
    args = ("-m", *TINY, "generation=0", "model.n_components=5000,4", f"hydra.sweep.dir={sweep_dir}")
    result = run_cli(*args, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0_debug=smoke,model.n_components=5000,model=gmm",
                                      "1_debug=smoke,model.n_components=4,model=gmm"]
    failed = (jobs[0] / "FAILED").read_text()
    assert failed.startswith("exit 2\n") and "model.n_components=5000 is not allowed" in failed
    assert (jobs[1] / "gen_000" / "DONE").exists() and not (jobs[1] / "FAILED").exists()
    assert "1 job(s) of the sweep failed" in output and "Traceback" not in output
    html = (sweep_dir / "sweep.html").read_text()
    assert "FAILED" in html and "model.n_components=5000 is not allowed" in html

    again = run_cli(*[a.replace("generation=0", "generation=1") for a in args], cwd=tmp_path)
    assert again.returncode == 2, (again.stdout + again.stderr)[-3000:]
    assert sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) == jobs
    assert (jobs[1] / "gen_001" / "DONE").exists() and (jobs[0] / "FAILED").exists()
    assert "resuming" in (jobs[1] / "run.log").read_text()


def test_run_identity_has_one_list() -> None:
    """Every key resume may see change (resume.IGNORED, with its sub-keys) is left out of the run dir's name, and
    nothing else is."""
    for key in IGNORED:
        assert not_identity([f"{key}=1", f"{key}.sub=2", f"+{key}.new=3"]) == sorted({key, f"{key}.sub",
                                                                                       f"{key}.new"})
    assert not_identity(["seed=1", "model=gmm", "model.n_components=3", "regime=accumulate", "debug=smoke"]) == []
    cfg = compose("debug=smoke", "report.grid_size=16", "cache_dir=/elsewhere", "logger.images=false",
                  "dataset=mnist", "dataset.download=false", "threads=1", "generation=4", "seed=3",
                  return_hydra_config=True)
    assert cfg.hydra.job.override_dirname == "dataset=mnist,debug=smoke,seed=3"
    exclude = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    assert exclude == {"report.grid_size", "cache_dir", "logger.images", "dataset.download", "threads", "generation"}


def test_hydra_config_uses_the_one_list() -> None:
    config = yaml.safe_load((REPO / "imgcollapse" / "conf" / "config.yaml").read_text())
    exclude = config["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    assert exclude == "${not_identity:${hydra.overrides.task}}"  # computed from resume.IGNORED, never listed here


@pytest.mark.parametrize(("override", "expected"), [
    ("+model.n_component=1", "model.n_component=1 is not allowed: a key of GMMConfig (did you mean 'n_components'?)"),
    ("+sampling.step=3", "sampling.step=3 is not allowed: a key of SamplingConfig (did you mean 'steps'?)"),
])
def test_a_key_appended_to_a_typed_node_is_refused_not_dropped(override: str, expected: str) -> None:
    """`+key=value` gets past Hydra's schema check; the dataclass would then drop the key without a word."""
    from imgcollapse.config import validate
    from imgcollapse.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        validate(compose("debug=smoke", "model=gmm", override))
    assert str(info.value).startswith(expected)


# One table of exit codes, and --version on every command -----------------------------------------------------------
def _commands() -> dict:
    from imgcollapse import recorded
    from imgcollapse.calibrate import main as calibrate
    from imgcollapse.report.__main__ import main as report
    from imgcollapse.study import main as study
    from imgcollapse.verdicts.simulate import main as simulate

    return {"imgcollapse-report": report, "imgcollapse-calibrate": calibrate, "imgcollapse-study": study,
            "imgcollapse.verdicts.simulate": simulate, "imgcollapse.recorded": recorded.main}


def _call(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's --help and --version exit
        return int(e.code or 0)


def test_one_table_of_exit_codes_in_the_code_the_docs_and_every_help(capsys: pytest.CaptureFixture) -> None:
    from imgcollapse import cli
    from imgcollapse.errors import EXIT_CODES, exit_codes_markdown, exit_codes_text

    assert exit_codes_markdown() in (REPO / "docs" / "RELIABILITY.md").read_text()
    assert {cli.EXIT_USER, cli.EXIT_DIVERGED, cli.EXIT_WRITE, cli.EXIT_INTERRUPTED} <= set(EXIT_CODES)
    assert exit_codes_markdown().splitlines()[2:] == [f"| {c} | {m} |" for c, m in EXIT_CODES.items()]
    footer = yaml.safe_load((REPO / "imgcollapse/conf/hydra/help/imgcollapse.yaml").read_text())["footer"]
    assert "${exit_codes_help:}" in footer  # imgcollapse --help prints the same text (tests/test_packaging.py)
    for name, main in _commands().items():
        assert _call(main, ["--help"]) == 0, name
        assert exit_codes_text() in capsys.readouterr().out, name


def test_every_command_prints_the_kits_version(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgcollapse import run
    from imgcollapse._version import __version__, version_line
    from imgcollapse.metric_facts import RULER_VERSION

    for name, main in _commands().items():
        assert _call(main, ["--version"]) == 0, name
        assert capsys.readouterr().out.strip() == version_line(name)
    monkeypatch.setattr(sys, "argv", ["imgcollapse", "--version"])  # Hydra's own --version would print Hydra's
    assert _call(lambda argv: run.main(), []) == 0
    out = capsys.readouterr().out.strip()
    assert out == version_line("imgcollapse") and f"imgcollapse {__version__} (metrics ruler {RULER_VERSION}" in out
