"""The chain end to end on a tiny config: files on disk, rows, resume, extend, bad overrides."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import SMOKE_RUN, copy_run, run_chain, run_cli, run_module

from imgcollapse.data import ImageSet

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

SMOKE = ("debug=smoke",)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_smoke_chain_leaves_every_file(smoke_run):
    run_dir, result = smoke_run
    for g in range(3):
        gen = run_dir / f"gen_{g:03d}"
        for name in ("DONE", "samples.npz", "grid.png", "metrics.json", "strip.npz", "model/model_index.json"):
            assert (gen / name).exists(), f"{gen / name} missing"
    assert not (run_dir / "gen_003").exists()
    samples = ImageSet.load(run_dir / "gen_001" / "samples.npz")
    assert samples.images.dtype == torch.uint8 and samples.images.shape == (64, 1, 8, 8)
    assert samples.labels is not None and len(samples.labels) == 64  # predicted labels flow on
    assert "gen 2/2" in result.stdout + result.stderr


def test_smoke_chain_metric_rows(smoke_run):
    run_dir, _ = smoke_run
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["generation"]) for r in rows] == [0, 1, 2]
    for column in ("generation", "fid", "train_loss", "seconds", "num_train"):
        assert column in rows[0], column
    for r in rows:
        assert float(r["fid"]) > 0 and np.isfinite(float(r["fid"]))
        assert float(r["seconds"]) > 0
    assert int(rows[0]["num_train"]) == 1397  # generation 0: the real training pool
    assert int(rows[1]["num_train"]) == 64  # replace: the last generation's 64 samples
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in jsonl] == [0, 1, 2]
    assert jsonl[1]["fid"] == pytest.approx(float(rows[1]["fid"]))
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["dataset"]["num_train"] == 1397 and meta["dataset"]["num_heldout"] == 400
    assert meta["config"]["dataset"]["num_heldout"] == 400


def test_python_m_runs_and_writes_nothing_to_cwd(tmp_path):
    """`python -m imgcollapse.run` in a new interpreter, as a user types it (the other tests fork the entry point)."""
    result = run_module(*SMOKE, "model=gmm", "generation=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_resume_redoes_only_the_unfinished_generation(smoke_run, tmp_path):
    run_dir = copy_run(smoke_run[0], tmp_path / "run")
    rows = read_csv(run_dir / "metrics.csv")
    model_files = {g: (run_dir / f"gen_{g:03d}" / "model" / "unet" / "diffusion_pytorch_model.safetensors")
                   for g in range(3)}
    before = {g: p.stat().st_mtime_ns for g, p in model_files.items()}
    (run_dir / "gen_002" / "DONE").unlink()
    resumed = run_chain(run_dir, *SMOKE_RUN)
    after = {g: p.stat().st_mtime_ns for g, p in model_files.items()}
    assert after[0] == before[0] and after[1] == before[1]  # finished generations untouched
    assert after[2] != before[2]  # the unfinished one was redone
    assert (run_dir / "gen_002" / "DONE").exists()
    # seeds come from (seed, generation): the redone generation is the same as the first time, bit for bit
    assert repr(resumed[2]["fid"]) == rows[2]["fid"]
    assert len(ImageSet.load(run_dir / "gen_002" / "samples.npz")) == 64


def test_extend_trains_only_the_new_generation(smoke_run, tmp_path):
    run_dir = copy_run(smoke_run[0], tmp_path / "run")
    stamps = {g: (run_dir / f"gen_{g:03d}" / "DONE").stat().st_mtime_ns for g in range(3)}
    rows = run_chain(run_dir, *SMOKE_RUN, "generation=3")
    assert [r["generation"] for r in rows] == [0, 1, 2, 3]
    assert {g: (run_dir / f"gen_{g:03d}" / "DONE").stat().st_mtime_ns for g in range(3)} == stamps
    assert len(read_csv(run_dir / "metrics.csv")) == 4


def test_half_written_generation_is_redone(smoke_run, tmp_path):
    run_dir = copy_run(smoke_run[0], tmp_path / "run", generations=1)
    partial = run_dir / "gen_001"
    partial.mkdir()
    (partial / "samples.npz").write_bytes(b"truncated")
    rows = run_chain(run_dir, *SMOKE_RUN, "generation=1")
    assert [r["generation"] for r in rows] == [0, 1]
    assert len(ImageSet.load(partial / "samples.npz")) == 64


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("generation=-1", ["generation", "-1"]),
        ("model=nope", ["model", "ddpm"]),
        ("model.lrr=0.1", ["model.lrr"]),
        ("model.lr=fast", ["model.lr", "fast"]),
        ("regime.real_fraction=10", ["regime.real_fraction", "10"]),
    ],
)
def test_bad_override_names_the_key(tmp_path, override, names):
    result = run_cli(*SMOKE, override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for name in names:
        assert name in output, (name, output[-2000:])
    assert "Traceback" not in output
    assert not list((tmp_path / "run").glob("gen_*"))
