"""Protocols as the papers define them: where each generation starts (model.init) and what it spends (model.budget)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import compose_config, make_model, run_chain
from conftest import digits as load_digits

from imgcollapse.chain import starting_point
from imgcollapse.config import validate
from imgcollapse.data import ImageSet
from imgcollapse.errors import ConfigError
from imgcollapse.resume import config_differences

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`

FAST = ("debug=smoke", "threads=1", "report.draw=false")


def strip(run_dir, g: int) -> torch.Tensor:
    """Generation g's collapse strip: the same noise seed in every generation, so equal weights give equal images."""
    return ImageSet.load(run_dir / f"gen_{g:03d}" / "strip.npz").images


def rows(run_dir) -> list[dict]:
    return [json.loads((run_dir / f"gen_{g:03d}" / "metrics.json").read_text()) for g in range(3)]


@pytest.mark.parametrize("model", ["vae", "ddpm"])
@pytest.mark.parametrize("init", ["base", "previous"])
def test_a_fine_tune_of_zero_steps_is_its_starting_model(tmp_path, model, init):
    run_chain(tmp_path / "run", *FAST, f"model={model}", f"model.init={init}", "model.finetune_steps=0")
    first = strip(tmp_path / "run", 0)
    for g in (1, 2):
        assert torch.equal(strip(tmp_path / "run", g), first), f"generation {g} is not generation 0's model"
    recorded = rows(tmp_path / "run")
    assert [r["init_from"] for r in recorded] == [None, "gen_000", "gen_000" if init == "base" else "gen_001"]
    assert [r["train_steps"] for r in recorded] == [20, 0, 0]
    assert {r["init"] for r in recorded} == {init}


def test_fine_tuning_changes_the_model_and_uses_its_own_budget(tmp_path):
    run_chain(tmp_path / "run", *FAST, "model=vae", "model.init=previous", "model.finetune_steps=5",
              "model.finetune_lr=1e-3")
    assert not torch.equal(strip(tmp_path / "run", 1), strip(tmp_path / "run", 0))
    assert [r["train_steps"] for r in rows(tmp_path / "run")] == [20, 5, 5]


def test_scratch_is_todays_chain(tmp_path):
    """The default (init=scratch, budget=steps) trains new weights every generation, seeded by the fit."""
    run_chain(tmp_path / "run", *FAST, "model=vae", "generation=1")
    recorded = json.loads((tmp_path / "run" / "gen_001" / "metrics.json").read_text())
    assert recorded["init"] == "scratch" and recorded["init_from"] is None and recorded["train_steps"] == 20


def test_starting_points():
    model = make_model("vae", init="base")
    assert starting_point(model, 0, None) == ("base", None)
    assert starting_point(model, 5, None) == ("base", 0)
    model = make_model("vae", init="previous")
    assert starting_point(model, 5, None) == ("previous", 4)
    assert starting_point(make_model("vae"), 5, None) == ("scratch", None)
    assert starting_point(make_model("gmm"), 5, None) == ("scratch", None)


def test_a_resumed_fine_tuned_chain_is_bit_identical(tmp_path):
    args = (*FAST, "model=vae", "model.init=previous", "model.finetune_steps=5")
    run_chain(tmp_path / "straight", *args)
    run_chain(tmp_path / "resumed", *args, "generation=1")
    run_chain(tmp_path / "resumed", *args)
    for name in ("samples.npz", "strip.npz"):
        a = ImageSet.load(tmp_path / "straight" / "gen_002" / name).images
        assert torch.equal(a, ImageSet.load(tmp_path / "resumed" / "gen_002" / name).images)


def test_init_from_a_saved_model_reproduces_it_at_zero_steps(tmp_path):
    data = load_digits().train
    start = make_model("ddpm", sampling={"steps": 2}, train_steps=5, batch_size=8, warmup_steps=1)
    start.fit(data, seed=0)
    start.save(tmp_path / "model")
    tuned = make_model("ddpm", sampling={"steps": 2}, train_steps=5, batch_size=8, warmup_steps=1, init="base",
                       finetune_steps=0)
    stats = tuned.fit(data, seed=1, init_from=tmp_path / "model")
    assert stats["train_steps"] == 0 and math.isnan(stats["train_loss"])
    assert torch.equal(tuned.sample(6, seed=3).images, start.sample(6, seed=3).images)


@pytest.mark.parametrize("overrides, key", [
    (("model=gmm", "model.init=base"), "model.init"),
    (("model.init=warm",), "model.init"),
    (("model.finetune_steps=-1",), "model.finetune_steps"),
    (("model.budget=epochs",), "model.epochs"),
    (("model.budget=flops",), "model.budget"),
])
def test_bad_protocol_keys_are_named(overrides, key):
    with pytest.raises(ConfigError) as e:
        validate(compose_config(*overrides))
    assert key in str(e.value)


def test_runs_from_before_the_new_keys_resume_under_their_defaults():
    before = {"model": {"lr": 1.0}}
    assert config_differences(before, {"model": {"lr": 1.0, "init": "scratch", "budget": "steps"}}) == {}
    assert "model.init" in config_differences(before, {"model": {"lr": 1.0, "init": "base"}})


def test_a_fine_tunes_budget_is_unread_while_every_generation_trains_from_scratch():
    scratch = {"model": {"init": "scratch", "finetune_steps": 100, "finetune_lr": 1e-3}}
    assert config_differences(scratch, {"model": {"init": "scratch", "finetune_steps": None}}) == {}
    tuned = {"model": {"init": "previous", "finetune_steps": 100}}
    assert set(config_differences(tuned, {"model": {"init": "previous", "finetune_steps": 50}})) == {
        "model.finetune_steps"}
    assert set(config_differences(scratch, {"model": {"init": "base", "finetune_steps": 100}})) == {
        "model.init", "model.finetune_lr"}


# Compute budgets -------------------------------------------------------------------------------------------
def test_epochs_budget_grows_with_the_training_set():
    config = make_model("vae", budget="epochs", epochs=2.0, batch_size=16).config
    assert config.fit_budget(160, finetune=False).steps == 20
    assert config.fit_budget(320, finetune=False).steps == 40  # twice the data, twice the steps
    assert config.fit_budget(100, finetune=False).steps == math.ceil(2 * 100 / 16)
    fixed = make_model("vae", train_steps=30).config
    assert fixed.fit_budget(160, finetune=False).steps == fixed.fit_budget(10_000, finetune=False).steps == 30


def test_epochs_budget_in_an_accumulating_chain(tmp_path):
    run_chain(tmp_path / "run", *FAST, "model=vae", "regime=accumulate", "model.budget=epochs", "model.epochs=0.5")
    recorded = rows(tmp_path / "run")
    sizes = [r["num_train"] for r in recorded]
    assert sizes == [1397, 1397 + 64, 1397 + 128]
    assert [r["train_steps"] for r in recorded] == [math.ceil(0.5 * n / 16) for n in sizes]
    assert np.all(np.diff([r["train_steps"] for r in recorded]) > 0)


# Bertrand's mix -----------------------------------------------------------------------------------------------
def test_a_synthetic_ratio_larger_than_the_samples_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="regime.synthetic_ratio") as e:
        run_chain(tmp_path, *FAST, "model=gmm", "regime=real_plus", "regime.synthetic_ratio=0.5")
    assert "0.04581" in str(e.value)  # the largest ratio 64 samples allow on 1,397 real images
    assert not list(tmp_path.glob("gen_*"))


def test_bertrand_preset_is_their_protocol():
    config = validate(compose_config("experiment=bertrand_real_fraction"))
    assert config.model.init == "previous" and config.model.budget == "steps"
    assert config.regime.synthetic_ratio == 0.5 and type(config.regime).__name__ == "RealPlusConfig"


# Model families in turn ------------------------------------------------------------------------------------------
FAMILIES = ("model=gmm", "chain.models=[gmm,vae]", "+model@families.vae=vae", "+debug_model@families.vae=smoke_vae")


def test_families_alternate_and_resume_bit_for_bit(tmp_path):
    run_chain(tmp_path / "straight", *FAST, *FAMILIES, "generation=3")
    run_chain(tmp_path / "resumed", *FAST, *FAMILIES, "generation=1")
    rows = run_chain(tmp_path / "resumed", *FAST, *FAMILIES, "generation=3")
    assert [r["family"] for r in rows] == ["gmm", "vae", "gmm", "vae"]
    for g, weights in enumerate(["gmm.npz", "vae.safetensors"] * 2):
        assert (tmp_path / "resumed" / f"gen_{g:03d}" / "model" / weights).exists()
        a = ImageSet.load(tmp_path / "straight" / f"gen_{g:03d}" / "samples.npz").images
        assert torch.equal(a, ImageSet.load(tmp_path / "resumed" / f"gen_{g:03d}" / "samples.npz").images)
    assert rows[1]["train_steps"] == 20 and rows[2]["train_steps"] is None  # the VAE's smoke budget; EM has none


@pytest.mark.parametrize("overrides, key, says", [
    (("chain.models=[ddpm,vae]",), "chain.models", "+model@families.vae=vae"),
    (("chain.models=[]",), "chain.models", "non-empty"),
    (("chain.models=[ddpm,vae]", "+model@families.vae=vae", "model.init=previous"), "model.init (ddpm)",
     "another family's weights"),
    (("chain.models=[ddpm,vae]", "+model@families.vae=vae", "model.num_classes=10"), "chain.models",
     "agree on class conditioning"),
])
def test_bad_family_schedules_are_named(overrides, key, says):
    with pytest.raises(ConfigError) as e:
        validate(compose_config(*overrides))
    assert e.value.key == key and says in str(e.value)


def test_the_families_preset_composes_both_families_with_smoke_sizes():
    from imgcollapse.config import family_configs

    families = family_configs(validate(compose_config("experiment=families_alternating", "debug=smoke")))
    assert list(families) == ["ddpm", "vae"] and families["vae"].train_steps == families["ddpm"].train_steps == 20


# Long horizons -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, kind, regime", [
    ("kazdan_subsample", "GMMConfig", "AccumulateConfig"),
    ("gerstgrasser_accumulate_gaussian", "GMMConfig", "AccumulateConfig"),
    ("kazdan_subsample_vae", "VAEConfig", "AccumulateConfig"),
    ("feng_curation_gaussian", "GMMConfig", "ReplaceConfig"),
])
def test_bounded_or_growing_presets_run_long(preset, kind, regime):
    config = validate(compose_config(f"experiment={preset}"))
    assert config.generation >= 30
    assert type(config.model).__name__ == kind and type(config.regime).__name__ == regime
    if preset == "kazdan_subsample_vae":  # fixed compute: the question is the data, not the budget
        assert config.model.budget == "steps" and config.regime.subsample == 1397
    if preset == "feng_curation_gaussian":
        assert config.regime.curation == "verify" and config.regime.verify_threshold > 0


# A population of families side by side ---------------------------------------------------------------------------
POPULATION = ("model=gmm", "chain.population=[gmm,vae]", "+model@families.vae=vae",
              "+debug_model@families.vae=smoke_vae")


def test_a_population_of_two_runs_scores_each_member_and_resumes(tmp_path):
    run_chain(tmp_path / "straight", *FAST, *POPULATION)
    run_chain(tmp_path / "resumed", *FAST, *POPULATION, "generation=1")
    rows = run_chain(tmp_path / "resumed", *FAST, *POPULATION)
    assert len(ImageSet.load(tmp_path / "straight" / "gen_000" / "samples.npz")) == 64  # 32 from each member
    for g in range(3):
        model = tmp_path / "resumed" / f"gen_{g:03d}" / "model"
        assert (model / "member_0_gmm" / "gmm.npz").exists() and (model / "member_1_vae" / "vae.safetensors").exists()
        a = ImageSet.load(tmp_path / "straight" / f"gen_{g:03d}" / "samples.npz").images
        assert torch.equal(a, ImageSet.load(tmp_path / "resumed" / f"gen_{g:03d}" / "samples.npz").images)
    for row in rows:
        assert row["family"] == "population"
        assert row["fid_gmm"] != row["fid_vae"] and min(row["fid_gmm"], row["fid_vae"]) > 0
        assert row["model_train_loss_gmm"] is not None and row["model_train_loss_vae"] is not None
    from imgcollapse.report.run_report import curves_caption, read_run

    assert "each dash-dotted line one member on its own samples (gmm, vae;" in curves_caption(
        read_run(tmp_path / "resumed"))  # the report names the members it draws


def _panels(fig):
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


def test_curves_draw_population_members_in_their_metrics_panel_and_families_by_marker():
    from imgcollapse.report.plots import curves_figure

    rows = [{"generation": g, "family": "population", "fid": 10.0 + g, "fid_gmm": 9.0 + g, "fid_vae": 12.0 + 2 * g,
             "recall": 0.9 - 0.1 * g, "recall_gmm": 0.8, "recall_vae": 0.7} for g in range(3)]
    panels = _panels(curves_figure(rows, members=["gmm", "vae"]))
    assert len(panels) == 2  # fid and recall; the members' columns draw no panels of their own
    fid = next(ax for title, ax in panels.items() if title.startswith("fid"))
    lines = {line.get_label(): line for line in fid.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"pool", "gmm", "vae"}
    assert list(lines["vae"].get_ydata()) == [12.0, 14.0, 16.0]
    assert len(_panels(curves_figure(rows))) == 6  # without members every column is its own panel
    # only the columns members are scored on are theirs: recall_tail stays a metric (a member `mean` or `tail` is
    # refused by the config: test_a_member_name_that_would_overwrite_a_metric_is_refused)
    tails = [{**row, "fid_mean": 3.0, "recall_tail": 0.4, "recall_tail_lo": 0.3, "recall_tail_hi": 0.5} for row in rows]
    titles = list(_panels(curves_figure(tails, members=["gmm", "vae"])))
    assert len(titles) == 4 and any(t.startswith("recall_tail") for t in titles)

    turns = [{"generation": g, "family": ("gmm", "vae")[g % 2], "fid": float(g)} for g in range(4)]
    (ax,) = _panels(curves_figure(turns)).values()
    marks = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines() if line.get_linestyle() == "None"}
    assert marks == {"gmm": [0.0, 2.0], "vae": [1.0, 3.0]}


def test_population_samples_are_the_members_blocks(tmp_path):
    from imgcollapse.models.population import Population, blocks, member_seed

    data = load_digits().train
    members = [("gmm", make_model("gmm", n_components=2, max_iter=5)), ("vae", make_model("vae", train_steps=3,
                                                                                          batch_size=8))]
    population = Population(members)
    population.fit(data, seed=3)
    pooled = population.sample(7, seed=5)
    assert blocks(7, 2) == [(0, 4), (4, 7)] and pooled.members == [("gmm", 0, 4), ("vae", 4, 7)]
    assert torch.equal(pooled.images[:4], members[0][1].sample(4, seed=member_seed(5, 0)).images)
    assert torch.equal(pooled.images[4:], members[1][1].sample(3, seed=member_seed(5, 1)).images)


def test_a_member_name_that_would_overwrite_a_metric_is_refused():
    with pytest.raises(ConfigError) as e:  # its fid would land in fid_mean, a metric of the pool
        validate(compose_config("model=gmm", "chain.population=[gmm,mean]", "+model@families.mean=vae"))
    assert e.value.key == "chain.population" and "fid_mean" in str(e.value)


def test_population_and_turns_do_not_mix():
    with pytest.raises(ConfigError) as e:
        validate(compose_config("chain.models=[ddpm]", "chain.population=[ddpm,ddpm]"))
    assert e.value.key == "chain.population"
    config = validate(compose_config("experiment=population_families", "debug=smoke"))
    assert config.chain.population == ["ddpm", "vae"] and config.families["vae"].train_steps == 20
