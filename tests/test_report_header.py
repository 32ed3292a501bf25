"""What a report says before its figures (command, date, versions, machine, the resolved config) and what a reader
needs to read them (real-data row and lines, housekeeping apart, real images beside generation 0's)."""

from __future__ import annotations

import json
import re

import pytest

from imgcollapse.report import metric_info

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`


def test_header_real_data_and_housekeeping(smoke_run):
    run_dir, _ = smoke_run
    html = (run_dir / "report.html").read_text()
    record = json.loads((run_dir / "run.json").read_text())
    invocation = record["invocation"]
    assert invocation["command"].startswith("imgcollapse debug=smoke threads=1 logger=tensorboard")
    assert f"<code>{invocation['command']}</code>" in html
    assert re.search(r"torch \d", html) and "diffusers" in html and "imgcollapse" in html
    assert f"{invocation['machine']['cpus']} CPU cores" in html
    # the resolved config from run.json, not .hydra/config.yaml with its ${...}
    assert "Config (run.json (resolved))" in html
    config_block = html.split("Config (run.json (resolved))")[1]
    assert "${" not in config_block and "oc.env" not in config_block
    # the real-data row: the real floor (its FID among its scores) as the table's first row
    real = metric_info.real_values(record)
    assert "<td class=text>real floor</td>" in html and "fid" in real
    assert (run_dir / "housekeeping.png").exists() and (run_dir / "real_grid.png").exists()
    assert html.index("Real images beside generation 0") < html.index("Metrics by generation")
    assert html.index("Housekeeping") > html.index("Sample grids")


def test_titles_and_natural_ranges():
    assert metric_info.title("fid") == "fid ↓" and metric_info.title("recall_inception") == "recall_inception ↑"
    assert metric_info.title("density") == "density, best ≈1"
    assert metric_info.space("recall_inception") == "Inception-v3 features"
    assert metric_info.space("class_kl") == "predicted classes"
    assert metric_info.bounds("coverage") == (0, 1) and metric_info.bounds("density") is None
    assert metric_info.is_housekeeping("fit_seconds") and metric_info.is_housekeeping("num_train")
    assert not metric_info.is_housekeeping("fid")
    # a population member's training loss is housekeeping; what a fit found (the Gaussian's variance, the theory
    # check's quantity) and its compute (train_steps, what a budget=epochs chain grows) are drawn with the results
    assert metric_info.is_housekeeping("model_train_loss_vae") and not metric_info.is_housekeeping("train_steps")
    assert not metric_info.is_housekeeping("model_variance") and not metric_info.is_housekeeping("fid_vae")


def test_real_grid_rebuilt_from_a_recorded_dataset_config(tmp_path):
    """A run recorded before real_grid.png existed gets it from its dataset's recorded config (no network), and a
    dataset that needs a download is left out."""
    from omegaconf import OmegaConf

    from imgcollapse.config import compose
    from imgcollapse.report import header

    dataset = OmegaConf.to_container(compose("debug=smoke").dataset, resolve=True)
    path = header.rebuild_real_grid(tmp_path, {"dataset": dataset, "report": {"grid_size": 16}})
    assert path == tmp_path / header.REAL_GRID and path.stat().st_size > 0
    assert header.rebuild_real_grid(tmp_path / "other", {"dataset": {**dataset, "download": True}}) is None
