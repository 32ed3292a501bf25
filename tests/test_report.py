"""The per-run report: figures and their sizes, the strip's fixed noise, byte-identical rebuilds, missing
generations, the self-contained page, TensorBoard, and the one-line summary."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from imgcollapse.chain import strip_seed
from imgcollapse.data import ImageSet
from imgcollapse.models.ddpm import DDPM
from imgcollapse.report.__main__ import main as report_main
from imgcollapse.report.metric_info import is_housekeeping
from imgcollapse.report.plots import curve_panels, numeric_columns
from imgcollapse.report.run_report import build_run_report, class_frequencies, read_run
from imgcollapse.report.summary import summary_line
from imgcollapse.tracking import flatten

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

OUTPUTS = ("collapse_strip.png", "collapse.gif", "curves.png", "housekeeping.png", "classes.png", "real_grid.png",
           "report.html")


@pytest.fixture(scope="module")
def run_dir(smoke_run):
    """The session's 3-generation smoke chain (4 strip seeds, 16-image grids) with TensorBoard on."""
    return smoke_run[0]


def report_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgcollapse.report", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_chain_leaves_every_figure_at_its_size(run_dir):
    for name in OUTPUTS:
        assert (run_dir / name).stat().st_size > 0, name
    # strip: 64-px labels + 4 seeds x (48-px cell + 2) + 2 wide; 16-px title + 3 generations x 50 + 2 high
    assert Image.open(run_dir / "collapse_strip.png").size == (64 + 4 * 50 + 2, 16 + 3 * 50 + 2)
    gif = Image.open(run_dir / "collapse.gif")
    assert gif.n_frames == 3 and gif.info["loop"] == 0
    assert gif.size == Image.open(run_dir / "gen_002" / "grid.png").size == (4 * 50 + 2, 16 + 4 * 50 + 2)
    rows = [json.loads((run_dir / f"gen_{g:03d}" / "metrics.json").read_text()) for g in range(3)]
    columns = numeric_columns(rows)
    n = len(curve_panels([c for c in columns if not is_housekeeping(c)]))
    assert n >= 4  # fid, confidence, recall, ... whatever the metrics provide
    assert Image.open(run_dir / "curves.png").size == (260 * min(n, 4), 200 * math.ceil(n / 4))
    k = len(curve_panels([c for c in columns if is_housekeeping(c)]))  # loss, sizes, seconds: their own figure
    assert k >= 3 and Image.open(run_dir / "housekeeping.png").size == (260 * min(k, 4), 200 * math.ceil(k / 4))
    assert Image.open(run_dir / "classes.png").size == (1000, 400)


def test_strip_rows_are_the_same_noise_decoded_by_each_generation(run_dir):
    strip = np.asarray(Image.open(run_dir / "collapse_strip.png").convert("L"))
    for g in (0, 2):
        stored = ImageSet.load(run_dir / f"gen_{g:03d}" / "strip.npz").images
        model = DDPM.load(run_dir / f"gen_{g:03d}" / "model")
        # the strip seed does not depend on the generation: every row starts from the same noise
        assert torch.equal(model.sample(4, seed=strip_seed(0)).images, stored)
        for c in range(4):  # each cell of row g is that sample upscaled 6x, nothing else
            x, y = 64 + 2 + c * 50, 16 + 2 + g * 50
            cell = strip[y : y + 48, x : x + 48]
            assert np.array_equal(cell, np.kron(stored[c, 0].numpy(), np.ones((6, 6), dtype=np.uint8)))
    rows = [ImageSet.load(run_dir / f"gen_{g:03d}" / "strip.npz").images for g in range(3)]
    assert not torch.equal(rows[0], rows[2])  # the generations differ: the strip shows the drift


def test_rebuild_from_disk_is_byte_identical(run_dir):
    before = {name: (run_dir / name).read_bytes() for name in OUTPUTS}
    done = {g: (run_dir / f"gen_{g:03d}" / "DONE").stat().st_mtime_ns for g in range(3)}
    result = report_cli(run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in OUTPUTS:
        assert (run_dir / name).read_bytes() == before[name], f"{name} changed on rebuild"
    assert {g: (run_dir / f"gen_{g:03d}" / "DONE").stat().st_mtime_ns for g in range(3)} == done
    assert "3 finished generation(s)" in result.stderr


def test_report_on_a_run_with_missing_and_unfinished_generations(run_dir, tmp_path, caplog):
    """The report's own entry point, called in this process (the test above runs it as `python -m`)."""
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged, ignore=shutil.ignore_patterns("model", "tensorboard", *OUTPUTS))
    shutil.rmtree(damaged / "gen_001")
    (damaged / "gen_002" / "grid.png").unlink()  # rebuilt from the generation's samples
    (damaged / "gen_003").mkdir()  # a generation still being written: no DONE
    shutil.copy(damaged / "gen_002" / "samples.npz", damaged / "gen_003" / "samples.npz")
    with caplog.at_level(logging.INFO, logger="imgcollapse.report"):
        assert report_main([str(damaged)]) == 0
    assert "gen_001: missing" in caplog.text
    assert "gen_003: unfinished" in caplog.text
    html = (damaged / "report.html").read_text()
    assert "gen_001: missing" in html and "gen_003: unfinished" in html
    # the strip keeps a (grey) row for the missing generation; the GIF shows the finished ones
    assert Image.open(damaged / "collapse_strip.png").size == (64 + 4 * 50 + 2, 16 + 3 * 50 + 2)
    assert Image.open(damaged / "collapse.gif").n_frames == 2
    assert (damaged / "gen_002" / "grid.png").read_bytes() == (run_dir / "gen_002" / "grid.png").read_bytes()
    record = read_run(damaged)
    assert record.done == [0, 2] and [r["generation"] for r in record.rows] == [0, 2]
    assert not record.complete


def test_report_html_is_self_contained(run_dir):
    html = (run_dir / "report.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    # strip, curves, classes, GIF, the three grids, the real grid and generation 0's side by side, housekeeping
    assert len(sources) == 4 + 3 + 2 + 1
    for src in sources:
        kind, data = re.match(r"data:image/(png|gif);base64,(.+)", src).groups()
        assert Image.open(io.BytesIO(base64.b64decode(data))).format == kind.upper()
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in header:  # every metric column is in the table, whatever the metrics provide; intervals and
        # spreads beneath their value, per-class scores in their own table
        if column.endswith(("_lo", "_hi", "_sd")) and column[:-3] in header:
            continue
        if column.startswith(("recall_class_", "coverage_class_")):
            assert f"<td class=text>{column.split('_class_')[1]}</td>" in html
        elif not column.startswith("class_freq_"):
            assert f"<th>{column}</th>" in html, column
    assert "real floor" in html and '<span class="ci">[' in html  # the floor's row and the intervals
    assert "<tr><td class=text>0</td>" in html  # generation 0's row is labelled (a raw 0 once printed as empty)
    assert "num_synthetic: 64" in html  # the config


def test_tensorboard_gets_scalars_grids_and_hparams(run_dir):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    scalars, images, plugins = {}, [], set()
    for path in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                plugins.add(value.metadata.plugin_data.plugin_name)
                if value.tag == "grid":
                    images.append(event.step)
                elif value.HasField("simple_value") or value.metadata.plugin_data.plugin_name == "scalars":
                    v = value.simple_value if value.HasField("simple_value") else float(
                        np.frombuffer(value.tensor.tensor_content, np.float32)[0]
                        if value.tensor.tensor_content else value.tensor.float_val[0])
                    scalars.setdefault(value.tag, {})[event.step] = v
    fid = {g: json.loads((run_dir / f"gen_{g:03d}" / "metrics.json").read_text())["fid"] for g in range(3)}
    assert scalars["fid"] == pytest.approx(fid, rel=1e-5)
    assert sorted(images) == [0, 1, 2]
    assert "hparams" in plugins


def test_class_plot_prefers_the_metrics_class_columns(tmp_path):
    names = ["a", "b", "c"]
    (tmp_path / "run.json").write_text(json.dumps(
        {"config": {"generation": 1}, "dataset": {"class_names": names, "class_counts": {"train": [50, 30, 20]}}}))
    for g, freqs in enumerate([[0.5, 0.3, 0.2], [0.7, 0.3, 0.0]]):
        gen = tmp_path / f"gen_{g:03d}"
        gen.mkdir()
        row = {"generation": g, "fid": 10.0 + g, **{f"class_freq_{n}": f for n, f in zip(names, freqs, strict=True)}}
        (gen / "metrics.json").write_text(json.dumps(row))
        (gen / "DONE").write_text("")
    found_names, real, gens, table, source = class_frequencies(read_run(tmp_path))
    assert found_names == names and real == [0.5, 0.3, 0.2] and gens == [0, 1]
    assert np.allclose(table, [[0.5, 0.3, 0.2], [0.7, 0.3, 0.0]]) and "class_freq_" in source
    record = build_run_report(tmp_path)  # no samples, strips or grids on disk: drawn as far as possible
    assert (tmp_path / "classes.png").exists() and (tmp_path / "curves.png").exists()
    assert not (tmp_path / "collapse_strip.png").exists()
    assert "gen_000: samples.npz, strip.npz, grid.png missing" in record.missing


def test_curve_panels_take_any_column_and_group_families():
    columns = ["fid", "kid", "num_train", "num_real", "seconds", "fit_seconds", "class_freq_0", "share_gen_000"]
    panels = {p.title: p.columns for p in curve_panels(columns)}
    assert panels == {"fid": ["fid"], "kid": ["kid"], "training-set size": ["num_train", "num_real"],
                      "seconds": ["seconds", "fit_seconds"], "training-set share by source": ["share_gen_000"]}
    rows = [{"generation": 0, "fid": 3.0, "extractor": "classifier", "kid": None}, {"generation": 1, "fid": "4.5"}]
    assert numeric_columns(rows) == ["fid"]  # text and all-empty columns are not drawn


def test_summary_line_shows_the_columns_that_exist():
    row = {"generation": 3, "fid": 41.234, "recall": 0.3149, "tail_ratio": 0.4211, "seconds": 37.8, "kid": 0.1}
    assert summary_line(row, 10) == "gen 3/10  fid 41.2  recall 0.31  tail 0.42  38 s"
    assert summary_line({"generation": 0, "fid": 7.06, "recall": None, "seconds": 2.2}, 2) == "gen 0/2  fid 7.1  2 s"


def test_flatten_gives_primitives_for_hparams():
    flat = flatten({"model": {"lr": 0.003, "blocks": [32, 48], "ema": None}, "seed": 0, "debug": True})
    assert flat == {"model.lr": 0.003, "model.blocks": "[32, 48]", "model.ema": "None", "seed": 0, "debug": True}


class CountingTracker:
    kind = "counting"

    def __init__(self) -> None:
        self.logged: list[int] = []

    def log_generation(self, generation, row, grid) -> None:
        self.logged.append(generation)


@pytest.mark.parametrize(("redraw_seconds", "draw", "drawn"), [(0, True, 3), (3600, True, 1), (0, False, 0)])
def test_the_report_is_redrawn_at_most_every_redraw_seconds_and_at_the_end(monkeypatch, tmp_path, redraw_seconds,
                                                                          draw, drawn):
    """report.redraw_seconds throttles the redraws while a chain runs; the end always redraws what changed; the
    tracker gets every generation; report.draw=false draws nothing."""
    import imgcollapse.run as entry

    calls = []
    def build(run_dir):
        calls.append(run_dir)
        (run_dir / "report.html").write_text("")

    monkeypatch.setattr(entry, "build_run_report", build)
    tracker = CountingTracker()
    reporter = entry.Reporter(tmp_path, tracker, redraw_seconds, draw=draw)
    for g in range(3):
        reporter(g, {"generation": g})
    reporter.finish()
    assert len(calls) == drawn and tracker.logged == [0, 1, 2]
    reporter.finish()  # nothing new since the last redraw
    assert len(calls) == drawn


def test_a_failed_redraw_is_tried_again_when_the_chain_ends(monkeypatch, tmp_path, caplog):
    import imgcollapse.run as entry

    calls = []

    def build(run_dir):
        calls.append(run_dir)
        if len(calls) == 1:
            raise ValueError("a figure could not be drawn")
        (run_dir / "report.html").write_text("")

    (tmp_path / "report.html").write_text("an old report")
    monkeypatch.setattr(entry, "build_run_report", build)
    reporter = entry.Reporter(tmp_path, CountingTracker(), redraw_seconds=0)
    with caplog.at_level(logging.WARNING, logger="imgcollapse"):
        reporter(0, {"generation": 0})
    assert "report failed (ValueError: a figure could not be drawn)" in caplog.text
    reporter.finish()  # the report on disk is the old one: drawn again
    assert len(calls) == 2 and (tmp_path / "report.html").read_text() == ""
