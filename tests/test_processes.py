"""Data-parallel training under `accelerate launch`: the main process alone writes, into the same layout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli

from imgcollapse.chain import generation_seeds
from imgcollapse.data import ImageSet
from imgcollapse.errors import UserError
from imgcollapse.models.ddpm import DDPM

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

SMOKE = ("debug=smoke", "generation=1", "threads=1", "report.draw=false")  # data, not figures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def layout(run_dir) -> set[str]:
    """Every file a run leaves, relative to its directory (the log and Hydra's own files aside)."""
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()
            and ".hydra" not in p.parts and p.name != "run.log"}


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups on localhost")
def test_two_processes_write_one_run_dir_like_one_process(tmp_path):
    single = tmp_path / "single"
    result = run_cli(*SMOKE, f"hydra.run.dir={single}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]

    work = tmp_path / "work"  # the launch's current directory: nothing may land here
    work.mkdir()
    double = tmp_path / "double"
    # (accelerate's --multi_gpu is its torchrun launcher; with no GPU the kit trains over gloo on the CPU)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "imgcollapse.run", *SMOKE, f"hydra.run.dir={double}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    result = subprocess.run(launch, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "2 processes" in output  # the main process says it leads two

    assert layout(double) == layout(single)
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["double", "single", "work"]
    rows = (double / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + generations 0 and 1, written once (by the main process alone)
    assert len((double / "metrics.jsonl").read_text().splitlines()) == 2

    # The numbers: the same columns, the same training-set bookkeeping, every metric finite, and what each
    # generation wrote is what its saved model makes (the main process sampled from the model both trained).
    one, two = read_rows(single), read_rows(double)
    assert list(one[0]) == list(two[0])
    for a, b in zip(one, two, strict=True):
        for column in ("generation", "num_train", "num_real", "num_synthetic"):
            assert a[column] == b[column], column
        assert all(np.isfinite(v) for k, v in b.items() if isinstance(v, float)), b
        assert 0 < b["fid"] < 10 * a["fid"] and b["train_loss"] < 2 * a["train_loss"]  # it learned as one process
    assert json.loads((double / "run.json").read_text())["environment"]["num_processes"] == 2
    for g in range(2):
        saved = ImageSet.load(double / f"gen_{g:03d}" / "samples.npz")
        model = DDPM.load(double / f"gen_{g:03d}" / "model")
        again = model.sample(len(saved), seed=generation_seeds(0, g)["sample"])
        assert torch.equal(again.images, saved.images), g
    # generation 1 of both processes trained on generation 0's samples: the same set, read back from disk
    assert two[1]["num_train"] == len(ImageSet.load(double / "gen_000" / "samples.npz"))


def read_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class FakeState:
    """The two attributes chain.barrier reads of accelerate's state."""

    def __init__(self, main: bool) -> None:
        self.num_processes, self.is_main_process = 2, main


def test_a_main_process_failure_reaches_the_others_at_the_barrier(monkeypatch):
    """What every rank receives is what rank 0 sent: its failure stops the others instead of leaving them at the
    next barrier (the real broadcast runs in the launch test above)."""
    import imgcollapse.chain as chain

    sent = []

    def broadcast(objects):  # rank 0's list reaches everyone
        if not sent:
            sent.append(list(objects))
        return sent[0]

    monkeypatch.setattr(chain, "broadcast_object_list", broadcast)
    with pytest.raises(OSError, match="disk full"):
        chain.barrier(FakeState(main=True), OSError("disk full"))
    with pytest.raises(UserError, match=r"the main process stopped \(OSError: disk full\)"):
        chain.barrier(FakeState(main=False))
    sent.clear()
    chain.barrier(FakeState(main=True))  # no failure: everyone goes on
    chain.barrier(FakeState(main=False))
