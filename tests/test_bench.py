"""scripts/bench.py's study accounting on a tiny hand-written study dir (answers worked out by hand below), and
--quick's choice of optimizations. Nothing here trains or times anything."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("imgcollapse_bench_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# A VAE on 1×4×4 images, widths [2], latent 1. Forward FLOPs per image (2 per multiply-add):
#   encoder conv 1→2, 3×3, stride 2 → 2×2×2 outputs: 2 · 8 · 1 · 9 = 144
#   to_latent Linear(8 → 2): 2 · 8 · 2 = 32;  from_latent Linear(1 → 8): 2 · 1 · 8 = 16
#   decoder conv 2→1, 3×3 on 4×4: 2 · 16 · 2 · 9 = 576
#   training forward 144 + 32 + 16 + 576 = 768; sampling (decode) 16 + 576 = 592
VAE = {"_target_": "imgcollapse.models.vae.VAE", "block_out_channels": [2], "latent_dim": 1, "batch_size": 4,
       "train_steps": 5, "budget": "steps"}
GMM = {"_target_": "imgcollapse.models.gmm.GMM", "n_components": 2}


def config(model: dict, curation: str = "none") -> dict:
    return {"threads": None, "num_synthetic": 6, "model": model, "families": {}, "chain": {"population": None},
            "sampling": {"steps": 10, "guidance": 0.0}, "report": {"strip_seeds": 2}, "metrics": {"num_null": None},
            "regime": {"curation": curation, "keep_fraction": 0.5}}


def write_chain(run_dir: Path, model: dict, rows: list[dict], shared: str | None = None) -> None:
    run_dir.mkdir(parents=True)
    run = {"config": config(model), "dataset": {"image_shape": [1, 4, 4], "num_heldout": 3},
           "invocation": {"machine": {"cpus": 4}}}
    (run_dir / "run.json").write_text(json.dumps(run))
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["generation", "train_steps", "seconds", "fit_seconds", "sample_seconds",
                                    "metrics_seconds"])
        writer.writeheader()
        writer.writerows(rows)
    if shared:
        (run_dir / "shared_gen0.json").write_text(json.dumps({"generation": 0, "shared": shared}))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """Two chains at 2 threads on a 4-core machine, 100 + 20 s of study runs: a VAE chain of generations 0 and 1
    (10 s and 20 s, 5 and 7 steps), and a GMM chain whose generation 0 was copied from another (10 s, not its
    compute) and whose generation 1 took 30 s."""
    (tmp_path / "study.json").write_text(json.dumps({
        "threads": 2, "runs": [{"seconds": 100.0}, {"seconds": 20.0}],
        "chains": [{"run_dir": "vae/seed_0"}, {"run_dir": "gmm/seed_0"}]}))
    write_chain(tmp_path / "vae" / "seed_0", VAE, [
        {"generation": 0, "train_steps": 5, "seconds": 10.0, "fit_seconds": 6, "sample_seconds": 1,
         "metrics_seconds": 3},
        {"generation": 1, "train_steps": 7, "seconds": 20.0, "fit_seconds": 15, "sample_seconds": 1,
         "metrics_seconds": 4}])
    write_chain(tmp_path / "gmm" / "seed_0", GMM, [
        {"generation": 0, "train_steps": "", "seconds": 10.0, "fit_seconds": 1, "sample_seconds": 1,
         "metrics_seconds": 8},
        {"generation": 1, "train_steps": "", "seconds": 30.0, "fit_seconds": 1, "sample_seconds": 1,
         "metrics_seconds": 28}], shared="files")
    return tmp_path


def test_vae_forward_flops_match_the_hand_count(bench):
    per, why = bench.per_image_flops(VAE, {"steps": 10}, (1, 4, 4))
    assert why is None
    assert (per.train, per.sample, per.sample_evals) == (768, 592, 1)


def test_gmm_has_no_flop_count_and_says_why(bench):
    per, why = bench.per_image_flops(GMM, {"steps": 10}, (1, 4, 4))
    assert per is None and "GMM" in why


def test_generation_flops(bench):
    # training 3 · 100 · batch 4 · 5 steps; sampling 100 per evaluation · 10 steps · 11 images
    flops = bench.generation_flops(bench.PerImage(100, 100, 10), batch_size=4, train_steps=5, images=11)
    assert flops == {"train": 6000, "sample": 11000, "total": 17000}


def test_images_sampled_counts_candidates_strip_and_null(bench):
    assert bench.images_sampled(config(VAE), num_heldout=3) == 6 + 2 + 3
    # curation keeps half: twice the candidates and twice the null draws
    assert bench.images_sampled(config(VAE, curation="reward"), num_heldout=3) == 12 + 2 + 6


def test_row_flops_from_the_row_steps_and_an_adopted_model(bench):
    row = {"generation": "1", "train_steps": "7"}
    flops, why = bench.row_flops(row, config(VAE), (1, 4, 4), 3)
    assert why is None
    assert flops == {"train": 3 * 768 * 4 * 7, "sample": 592 * 11, "total": 64512 + 6512}
    adopted, _ = bench.row_flops(row, config(VAE), (1, 4, 4), 3, trained=False)
    assert adopted == {"train": 0, "sample": 6512, "total": 6512}


def test_study_summary_by_hand(bench, study: Path):
    probe = {"gflops": 8.0, "threads": 4, "peak_gflops_per_core": 2.0, "platform": "elsewhere"}
    s = bench.summarize_study(study, probe)
    assert s["wall_seconds"] == 120  # the two runs' seconds
    assert s["cores"] == 4 and s["chains"] == 2
    assert s["generations"] == 3  # the copied generation 0 is not the GMM chain's compute
    # (10 + 20) s × 2 threads + 30 s × 2 threads
    assert s["compute_core_seconds"] == pytest.approx(120)
    assert s["idle_share"] == pytest.approx(1 - 120 / (120 * 4))  # 0.75
    vae_flops = (3 * 768 * 4 * 5 + 592 * 11) + (3 * 768 * 4 * 7 + 592 * 11)  # 52592 + 71024
    assert s["flops_total"] == vae_flops
    assert s["generations_flops_counted"] == 2
    # the cores are the launcher's: joblib's 3 jobs × 2 threads, not the machine's 4 CPUs
    record = json.loads((study / "study.json").read_text())
    record["launcher"] = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"]
    (study / "study.json").write_text(json.dumps(record))
    assert bench.summarize_study(study, probe)["cores"] == 6
    assert s["flops_per_chain_generation"] == pytest.approx(vae_flops / 2)
    assert sum(s["generations_flops_uncounted"].values()) == 1
    achieved = vae_flops / 60 / 1e9  # over the VAE chain's 30 s × 2 threads only
    assert s["achieved_gflops_per_core"] == pytest.approx(achieved)
    assert s["peak_share"] == pytest.approx(achieved / 2.0)
    assert s["probe_gflops"] == 8.0
    assert s["probe_same_machine"] is False  # the study's run.json names no platform
    assert "| tiny | 2.0 | 4 | 2 | 2.0 | 75% |" in bench.table_studies({"probe": probe, "studies": {"tiny": s}})


def test_measured_wall_overrides_the_runs(bench, study: Path):
    s = bench.summarize_study(study, None, wall_seconds=60.0)
    assert s["idle_share"] == pytest.approx(1 - 120 / (60 * 4))  # 0.5
    assert s["peak_share"] is None and s["achieved_gflops_per_core"] is not None


def test_quick_leaves_out_compile(bench):
    variants, skipped = bench.optimization_variants(quick=True)
    assert "compile" not in variants and variants[0] == "plain"
    assert [sk["variant"] for sk in skipped] == ["compile"] and skipped[0]["reason"]
    full, none_skipped = bench.optimization_variants(quick=False)
    assert "compile" in full and none_skipped == []
