"""Never lose a chain: SIGKILL at named points and at random times, then resume to the same numbers.

Each run is a child of the tests' fork server (the chain's imports are paid once) that runs the real
`imgcollapse.run.run` with `IMGCOLLAPSE_FAULT=<point>[:<n>]` in its environment, so it kills itself with
SIGKILL at that point, or that the test kills after a random delay. Every finished chain must equal an
uninterrupted run of the same command: metrics.csv column by column, bit for bit (the same text), except
the wall-time columns (`*seconds`); and every generation's samples, pixel for pixel. All runs use one
thread, as the uninterrupted one does.
"""

from __future__ import annotations

import csv
import errno
import json
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CONF_DIR, copy_run, in_child, run_chain, run_cli

from imgcollapse import faults
from imgcollapse.data import ImageSet
from imgcollapse.models.train import TrainingDiverged
from imgcollapse.resume import ResumeRefused
from imgcollapse.store import WriteFailed

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

# generations 0 and 1, 20 steps, 64 samples in 2 batches; the figures are not drawn (tests/test_report.py draws
# them): what these tests compare is the data
CHAIN = ("debug=smoke", "generation=1", "threads=1", "report.draw=false")
KILLED = -signal.SIGKILL  # a child's exit code when SIGKILL ended it


def run_forked(run_dir: Path, *overrides: str, fault: str | None = None, kill_after: float | None = None) -> int:
    """Run the chain in a child of the fork server; `fault` arms IMGCOLLAPSE_FAULT there, `kill_after` SIGKILLs it
    from here after that many seconds. Returns the child's exit code (0: finished, -9: killed)."""
    return in_child(_chain, run_dir, overrides, fault, kill_after=kill_after)


def _chain(run_dir: Path, overrides: tuple[str, ...], fault: str | None) -> None:
    os.environ.pop(faults.ENV, None)
    if fault:
        os.environ[faults.ENV] = fault
    run_chain(run_dir, *overrides)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_same_chain(run_dir: Path, baseline: Path) -> None:
    """The chain in `run_dir` equals the uninterrupted one: every metric (as written, so bit for bit) but wall
    time, every sample; and nothing half-written is left behind."""
    rows, expected = read_csv(run_dir / "metrics.csv"), read_csv(baseline / "metrics.csv")
    assert [r["generation"] for r in rows] == [r["generation"] for r in expected]
    assert list(rows[0]) == list(expected[0])
    for row, want in zip(rows, expected, strict=True):
        for column, value in want.items():
            if not column.endswith("seconds"):
                assert row[column] == value, (row["generation"], column, row[column], value)
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in jsonl] == [int(r["generation"]) for r in expected]
    for g in range(len(expected)):
        ours, theirs = (ImageSet.load(d / f"gen_{g:03d}" / "samples.npz") for d in (run_dir, baseline))
        assert np.array_equal(ours.images.numpy(), theirs.images.numpy()), g
        assert np.array_equal(ours.labels.numpy(), theirs.labels.numpy()), g
    assert not list(run_dir.rglob("*.tmp")), "temporary files left behind"
    assert "released" in json.loads((run_dir / "run.lock").read_text())


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> tuple[Path, float]:
    """The uninterrupted chain, and how long it took."""
    run_dir = tmp_path_factory.mktemp("baseline")
    began = time.perf_counter()
    assert run_forked(run_dir, *CHAIN) == 0
    return run_dir, time.perf_counter() - began


def gen_files(run_dir: Path, g: int) -> set[str]:
    d = run_dir / f"gen_{g:03d}"
    return {p.name for p in d.iterdir()} if d.exists() else set()


# (fault, what the run dir must show right after the kill); each run resumes the one before it.
NAMED_KILLS = [
    ("train_step:7", lambda d: not (d / "gen_000" / "DONE").exists()),  # generation 0, mid-training
    ("sample:1", lambda d: not (d / "gen_000" / "DONE").exists()),  # after the first of two sampling batches
    ("metrics:1", lambda d: "samples.npz" not in gen_files(d, 0)),  # while scoring, nothing written yet
    ("write:3", lambda d: any(n.startswith(".samples.npz.") for n in gen_files(d, 0))),  # samples.npz torn
    ("before_done:1", lambda d: {"samples.npz", "metrics.json"} <= gen_files(d, 0) and "DONE" not in gen_files(d, 0)),
    ("after_done:1", lambda d: "DONE" in gen_files(d, 0) and not (d / "metrics.csv").exists()),  # tables short
    ("write:1", lambda d: any(p.name.startswith(".metrics.csv.") for p in d.iterdir())),  # the rebuilt table, torn
    ("train_step:15", lambda d: "DONE" not in gen_files(d, 1)),  # generation 1, mid-training
    ("sample:3", lambda d: "DONE" not in gen_files(d, 1)),  # generation 1's strip batch
    ("after_done:1", lambda d: "DONE" in gen_files(d, 1) and len(read_csv(d / "metrics.csv")) == 1),
]


def test_killed_at_every_named_point_resumes_to_the_same_numbers(baseline, tmp_path):
    for fault, state in NAMED_KILLS:
        assert run_forked(tmp_path, *CHAIN, fault=fault) == KILLED, f"{fault} was never reached"
        assert state(tmp_path), f"unexpected state after {fault}"
    assert run_forked(tmp_path, *CHAIN) == 0  # the last resume: generation 1 is done, the tables are rebuilt
    assert_same_chain(tmp_path, baseline[0])


def test_killed_at_random_times_resumes_to_the_same_numbers(baseline, tmp_path):
    """Each kill starts from scratch and lands before the chain could finish, so every child is really killed."""
    baseline_dir, seconds = baseline
    rng = random.Random(8)
    for i, delay in enumerate(rng.uniform(0.1, 0.5) * seconds for _ in range(2)):
        run_dir = tmp_path / f"kill{i}"
        assert run_forked(run_dir, *CHAIN, kill_after=delay) == KILLED, f"the chain finished within {delay:.1f} s"
        assert run_forked(run_dir, *CHAIN) == 0
        assert_same_chain(run_dir, baseline_dir)


# (overrides, kill points): every kill lands in generation 1. The first kill comes in a run from scratch, the
# second in the resumed run, which starts at generation 1, so its count restarts there: smoke trains 20 steps a
# generation and samples 64 images in batches of 32, the strip and 64 null draws (the GMM draws each set in one call).
VARIANTS = {
    "vae": (("model=vae",), ["train_step:25", "sample:1"]),  # mid-training; then gen 1's first sampling batch
    "gmm": (("model=gmm",), ["sample:4", "metrics:1"]),  # gen 1's samples (after gen 0's samples, strip, null)
    "conditional-ddpm": (("model.num_classes=10", "sampling.guidance=1"), ["train_step:30", "before_done:1"]),
    "fresh": (("model=gmm", "regime=fresh", "regime.real_fraction=0.5"), ["metrics:2", "after_done:1"]),
    "accumulate": (("model=gmm", "regime=accumulate"), ["before_done:2", "sample:1"]),
    "curation": (("model=gmm", "regime.curation=confidence", "regime.keep_fraction=0.5"), ["sample:4", "metrics:1"]),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_model_and_regime_resumes_to_the_same_numbers(tmp_path, variant):
    overrides, kills = VARIANTS[variant]
    chain = (*CHAIN, *overrides)
    assert run_forked(tmp_path / "baseline", *chain) == 0
    for fault in kills:
        assert run_forked(tmp_path / "killed", *chain, fault=fault) == KILLED, f"{fault} was never reached"
        assert (tmp_path / "killed" / "gen_000" / "DONE").exists(), f"{fault} came before generation 1"
        table = tmp_path / "killed" / "metrics.csv"
        assert not table.exists() or len(read_csv(table)) == 1, f"{fault} came after generation 1"
    assert run_forked(tmp_path / "killed", *chain) == 0
    assert_same_chain(tmp_path / "killed", tmp_path / "baseline")


def test_a_kill_through_the_command_line_resumes_to_the_same_numbers(baseline, tmp_path):
    """The real entry point reads IMGCOLLAPSE_FAULT, warns that it is armed and dies by SIGKILL; the same chain
    resumed equals the uninterrupted one."""
    run_dir = tmp_path / "run"
    result = run_cli(*CHAIN, f"hydra.run.dir={run_dir}", env={faults.ENV: "before_done:2"})
    assert result.returncode == KILLED, result.stderr[-2000:]
    assert "fault injection armed" in result.stdout + result.stderr
    assert (run_dir / "gen_001" / "samples.npz").exists() and not (run_dir / "gen_001" / "DONE").exists()
    assert run_forked(run_dir, *CHAIN) == 0
    assert_same_chain(run_dir, baseline[0])


def test_a_diverged_generation_stops_keeps_the_earlier_ones_and_resumes_after_lowering_lr(baseline, tmp_path):
    shutil.rmtree(tmp_path)
    copy_run(baseline[0], tmp_path, generations=1)  # generation 0 finished
    done_at = (tmp_path / "gen_000" / "DONE").stat().st_mtime_ns
    with pytest.raises(ResumeRefused, match="model.lr"):  # a new lr on an old run must be asked for
        run_chain(tmp_path, *CHAIN, "model.lr=1e8")
    with pytest.raises(TrainingDiverged) as info:
        run_chain(tmp_path, *CHAIN, "model.lr=1e8", "resume=force")
    message = str(info.value)
    for part in ("generation 1", f"step {info.value.step}", "last finite loss", "model.lr, now 1e+08", "resume=force"):
        assert part in message, (part, message)
    assert (tmp_path / "gen_000" / "DONE").stat().st_mtime_ns == done_at  # generation 0 untouched
    assert not (tmp_path / "gen_001").exists()
    assert [r["generation"] for r in read_csv(tmp_path / "metrics.csv")] == ["0"]
    run_chain(tmp_path, *CHAIN, "resume=force")  # back to the run's lr (run.json now holds 1e8): force again
    assert_same_chain(tmp_path, baseline[0])
    changes = json.loads((tmp_path / "run.json").read_text())["config_changes"]
    assert [c["changed"]["model.lr"]["now"] for c in changes] == [1e8, 0.003]


def test_disk_full_while_saving_a_generation(baseline, tmp_path, monkeypatch):
    """A write error half-way through samples.npz: generation 1 not done, no part of it trusted, resumable."""
    real_save = ImageSet.save
    calls = []

    def save_then_fail(self, path):
        calls.append(path)
        if len(calls) == 4:  # gen 0: samples, strip, null; gen 1: samples -> half a file, then the disk is full
            real_save(self, path)
            os.truncate(path, Path(path).stat().st_size // 2)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(self, path)

    monkeypatch.setattr(ImageSet, "save", save_then_fail)
    with pytest.raises(WriteFailed, match="samples.npz: No space left on device"):
        run_chain(tmp_path, *CHAIN)
    assert "DONE" in gen_files(tmp_path, 0) and "DONE" not in gen_files(tmp_path, 1)
    assert "samples.npz" not in gen_files(tmp_path, 1) and not list(tmp_path.rglob("*.tmp"))
    assert [r["generation"] for r in read_csv(tmp_path / "metrics.csv")] == ["0"]
    monkeypatch.setattr(ImageSet, "save", real_save)
    run_chain(tmp_path, *CHAIN)
    assert_same_chain(tmp_path, baseline[0])


def full_disk(cfg, run_dir):
    raise WriteFailed(Path(run_dir) / "gen_000" / "samples.npz", OSError(errno.ENOSPC, "No space left on device"))


@pytest.mark.parametrize(
    ("overrides", "env", "replace_run", "status", "expected"),
    [
        (("model.lr=1e8",), {}, None, 3,  # a real divergence
         ["generation 0: loss became non-finite at step", "model.lr, now 1e+08", "resume=force"]),
        ((), {}, full_disk, 4, ["could not write", "samples.npz: No space left on device", "rerun the same command"]),
        ((), {faults.ENV: "nowhere:2"}, None, 2, ["IMGCOLLAPSE_FAULT='nowhere:2' is not allowed: <point>[:<n>]"]),
    ],
    ids=["diverged", "write-failed", "bad-fault-spec"],
)
def test_the_entry_point_turns_each_failure_into_a_message_and_an_exit_status(tmp_path, capfd, overrides, env,
                                                                              replace_run, status, expected):
    """`python -m imgcollapse.run`'s main(), run in a forked child (Hydra's main sets up logging and global
    state for its whole process): one log line, no traceback, the documented exit status."""
    import sys

    import imgcollapse.run as entry

    def child() -> None:
        os.environ.update(env)
        if replace_run is not None:
            entry.run = replace_run
        # imported rather than run as __main__, Hydra needs the config folder's absolute path
        sys.argv = ["imgcollapse.run", f"--config-path={CONF_DIR}", *CHAIN, "generation=0", *overrides,
                    f"hydra.run.dir={tmp_path / 'run'}"]
        entry.main()

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=300)
    output = "".join(capfd.readouterr())
    assert process.exitcode == status, output[-2000:]
    assert all(part in output for part in expected), output[-2000:]
    assert "Traceback" not in output


def test_num_synthetic_larger_than_a_batch(tmp_path):
    """70 samples in sampling batches of 32 (32 + 32 + 6), scored by the classifier in batches: the same images
    as one batch of 128 would give, the same features as one batch, a finite row."""
    from conftest import digits

    from imgcollapse.chain import generation_seeds
    from imgcollapse.metrics.features import load_or_train_classifier
    from imgcollapse.models.ddpm import DDPM

    rows = run_chain(tmp_path, "debug=smoke", "threads=1", "generation=0", "num_synthetic=70", "sampling.batch_size=32")
    samples = ImageSet.load(tmp_path / "gen_000" / "samples.npz")
    assert len(samples) == 70 and len(samples.labels) == 70 and np.isfinite(rows[0]["fid"])
    model = DDPM.load(tmp_path / "gen_000" / "model")
    model.sampling.batch_size = 128
    again = model.sample(70, seed=generation_seeds(0, 0)["sample"])
    assert np.array_equal(again.images.numpy(), samples.images.numpy())
    meta = json.loads((tmp_path / "run.json").read_text())
    splits = digits()
    classifier = load_or_train_classifier(splits.train, splits.heldout, Path(meta["config"]["cache_dir"]), epochs=2)
    whole, batched = classifier(samples.images), classifier(samples.images, batch_size=16)
    # equal up to float rounding: on some CPUs oneDNN blocks a batch of 16 differently from one of 70
    np.testing.assert_allclose(batched[0], whole[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched[1], whole[1], rtol=1e-5, atol=1e-7)
