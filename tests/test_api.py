"""The Python API and the plug-in points: a model and a dataset defined in this file, reached by `_target_` from a
config folder of the user's own (`hydra.searchpath`), run a chain through `imgcollapse.run_chain`; the run's table
and a generation's model load back."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import imgcollapse
from imgcollapse.data import ImageSet, Splits
from imgcollapse.errors import ConfigError, DamagedFile, UserError, require
from imgcollapse.regimes import Regime, RegimeConfig

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`


# A user's dataset: a function of its config (no schema of its own), returning the two splits --------------------
def stripes(config: Any) -> Splits:
    """8x8 grey images of two classes, a bright row (class 0) or a bright column (class 1), with noise."""
    rng = np.random.default_rng(config.seed)
    n = config.num_images
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 60, (n, 1, 8, 8))
    where = rng.integers(0, 8, n)
    for i in range(n):
        if labels[i] == 0:
            images[i, 0, where[i], :] = 230
        else:
            images[i, 0, :, where[i]] = 230
    data = ImageSet(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels), ["row", "column"])
    cut = n * 3 // 4
    return Splits(ImageSet(data.images[:cut], data.labels[:cut], data.class_names),
                  ImageSet(data.images[cut:], data.labels[cut:], data.class_names), {"source": "test stripes"})


# A user's model: a typed config (checked like the kit's own), and the five members the chain uses -----------------
@dataclass
class PixelGaussianConfig:
    _target_: str = "test_api.PixelGaussian"
    shrink: float = 1.0  # scale of the per-pixel standard deviation when sampling

    def check(self) -> None:
        if not 0 < self.shrink <= 1:
            raise ConfigError("model.shrink", self.shrink, "a scale in (0, 1]")


class PixelGaussian:
    """Each pixel an independent Gaussian: collapses fast, which is the point of a toy."""

    Config = PixelGaussianConfig
    num_classes = None  # unconditional

    def __init__(self, config: PixelGaussianConfig, *, image_shape: tuple[int, int, int], sampling: Any = None,
                 accelerator: Any = None) -> None:
        self.config, self.shape = config, tuple(image_shape)
        self.mean = self.std = None

    def fit(self, data: ImageSet, seed: int) -> dict[str, float]:
        x = data.images.double()
        self.mean, self.std = x.mean(0), x.std(0)
        return {"train_loss": float(self.std.mean())}

    def sample(self, n: int, seed: int, labels: torch.Tensor | None = None) -> ImageSet:
        g = torch.Generator().manual_seed(seed)
        x = self.mean + self.config.shrink * self.std * torch.randn((n, *self.shape), generator=g, dtype=torch.float64)
        return ImageSet(x.round().clamp(0, 255).to(torch.uint8))

    def save(self, path: Path) -> None:
        torch.save({"mean": self.mean, "std": self.std}, Path(path) / "pixels.pt")
        (Path(path) / "config.json").write_text(json.dumps({"shrink": self.config.shrink, "shape": self.shape}))

    @classmethod
    def load(cls, path: Path, accelerator: Any = None) -> PixelGaussian:
        meta = json.loads((Path(path) / "config.json").read_text())
        model = cls(PixelGaussianConfig(shrink=meta["shrink"]), image_shape=tuple(meta["shape"]))
        state = torch.load(Path(path) / "pixels.pt")
        model.mean, model.std = state["mean"], state["std"]
        return model


# A user's regime: its own file and its own YAML, nothing in the kit edited (docs/EXTENDING.md) ---------------------
@dataclass
class AnchoredConfig(RegimeConfig):
    _target_: str = "test_api.Anchored"
    anchor: int = 50  # real images kept in every training set beside the last generation's samples

    def check(self) -> None:
        super().check()
        require(self.anchor >= 0, "regime.anchor", self.anchor, "an integer >= 0")

    def check_data(self, *, num_train: int, **chain: Any) -> None:
        super().check_data(num_train=num_train, **chain)
        require(self.anchor <= num_train, "regime.anchor", self.anchor, f"at most the real pool's {num_train}")


class Anchored(Regime):
    """The last generation's samples plus the same `anchor` real images every generation."""

    Config = AnchoredConfig
    kind = "anchored"

    def _parts(self, real: ImageSet, synthetic: list[ImageSet], generation: int, seed: int) -> list[tuple]:
        return [("real", real.subset(list(range(self.config.anchor)))), (generation - 1, synthetic[-1])]


@pytest.fixture
def my_conf(tmp_path: Path) -> Path:
    """A user's config folder: model/pixels.yaml and dataset/stripes.yaml, nothing registered in the kit."""
    conf = tmp_path / "my_conf"
    (conf / "model").mkdir(parents=True)
    (conf / "dataset").mkdir()
    (conf / "model" / "pixels.yaml").write_text(textwrap.dedent("""\
        _target_: test_api.PixelGaussian
        shrink: 0.5
    """))
    (conf / "dataset" / "stripes.yaml").write_text(textwrap.dedent("""\
        _target_: test_api.stripes
        seed: 3
        num_images: 400
    """))
    (conf / "regime").mkdir()
    (conf / "regime" / "anchored.yaml").write_text(textwrap.dedent("""\
        _target_: test_api.Anchored
        anchor: 40
        curation: none
        keep_fraction: 1.0
        verify_threshold: 0.0
        verifier_seed: 1
        verifier_epochs: 1
    """))
    return conf


def test_a_users_model_and_dataset_run_a_chain_through_the_api(tmp_path: Path, my_conf: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = imgcollapse.compose("debug=smoke", "generation=2", "threads=1", "report.draw=false", "model=pixels",
                              "dataset=stripes", f"hydra.searchpath=[file://{my_conf}]")
    assert cfg.model._target_ == "test_api.PixelGaussian" and cfg.dataset.num_images == 400
    table = imgcollapse.run_chain(cfg)
    run_dir = tmp_path / "outputs" / "dataset=stripes,debug=smoke,model=pixels"  # as the command line names it
    assert (run_dir / "gen_002" / "DONE").exists()
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table
    assert [int(r["generation"]) for r in rows] == [0, 1, 2]
    assert all(np.isfinite(float(r["fid"])) for r in rows) and rows[0]["num_train"] == 300
    assert imgcollapse.load_run(run_dir) is not None
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["model"] == {"_target_": "test_api.PixelGaussian", "shrink": 0.5}
    assert record["dataset"]["class_names"] == ["row", "column"]

    model = imgcollapse.load_model(run_dir, generation=1)
    assert isinstance(model, PixelGaussian) and model.config.shrink == 0.5
    first, again = model.sample(8, seed=0), model.sample(8, seed=0)
    assert first.images.shape == (8, 1, 8, 8) and torch.equal(first.images, again.images)
    # the pixel spread shrinks by half each generation: the loaded model is generation 1's, not 0's or 2's
    stds = [imgcollapse.load_model(run_dir, g).std.mean().item() for g in (0, 1, 2)]
    assert stds[0] > stds[1] > stds[2]
    with pytest.raises(UserError, match="generation 3 of .* is not finished"):
        imgcollapse.load_model(run_dir, 3)


def test_a_users_typed_model_config_is_checked_like_the_kits(tmp_path: Path, my_conf: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from imgcollapse.config import validate

    monkeypatch.chdir(tmp_path)
    base = ("debug=smoke", "model=pixels", "dataset=stripes", f"hydra.searchpath=[file://{my_conf}]")
    with pytest.raises(ConfigError, match=r"model.shrnk=0.5 is not allowed: a key of PixelGaussianConfig "
                                          r"\(did you mean 'shrink'\?\)"):
        validate(imgcollapse.compose(*base, "~model.shrink", "+model.shrnk=0.5"))
    with pytest.raises(ConfigError, match="model.shrink=2.0 is not allowed: a scale in"):
        validate(imgcollapse.compose(*base, "model.shrink=2.0"))
    with pytest.raises(ConfigError, match="model.shrink"):
        validate(imgcollapse.compose(*base, "model.shrink=abc"))
    with pytest.raises(ConfigError, match="model._target_='test_api.Nope' is not allowed: an importable class"):
        validate(imgcollapse.compose(*base, "model._target_=test_api.Nope"))


def test_load_run_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a run directory"):
        imgcollapse.load_run(tmp_path)


# A generation's model where families take turns or live side by side ----------------------------------------------
FAST = ("debug=smoke", "generation=1", "threads=1", "report.draw=false", "metrics.bootstrap=0", "metrics.subsets=1",
        "metrics.kid_subsets=1", "model=gmm", "+model@families.vae=vae", "+debug_model@families.vae=smoke_vae")


def _samples(run_dir: Path, generation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A generation's saved samples and collapse strip (replace keeps every sample: no curation)."""
    gen_dir = run_dir / f"gen_{generation:03d}"
    return ImageSet.load(gen_dir / "samples.npz").images, ImageSet.load(gen_dir / "strip.npz").images


def _draws(model: Any, generation: int, n: int, strip: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the chain (seed 0) drew from generation `generation`'s model: its samples and its strip."""
    from imgcollapse.chain import generation_seeds, strip_seed

    return (model.sample(n, seed=generation_seeds(0, generation)["sample"]).images,
            model.sample(strip, seed=strip_seed(0)).images)


def test_a_population_generation_loads_as_the_population_that_drew_its_samples(tmp_path: Path) -> None:
    from conftest import run_chain

    from imgcollapse.models.gmm import GMM
    from imgcollapse.models.population import POPULATION_FILE, Population
    from imgcollapse.models.vae import VAE

    run_dir = tmp_path / "run"
    run_chain(run_dir, *FAST, "chain.population=[gmm,vae]")
    for g in (0, 1):
        model = imgcollapse.load_model(run_dir, g)
        assert isinstance(model, Population) and model.labels() == ["gmm", "vae"]
        assert [type(m) for m in model.models] == [GMM, VAE]
        samples, strip = _samples(run_dir, g)
        drawn, drawn_strip = _draws(model, g, len(samples), len(strip))
        assert torch.equal(drawn, samples) and torch.equal(drawn_strip, strip)
    (run_dir / "gen_001" / "model" / POPULATION_FILE).write_text("{\"members\": ")  # truncated
    with pytest.raises(DamagedFile, match=f"gen_001/model/{POPULATION_FILE} cannot be read"):
        imgcollapse.load_model(run_dir, 1)


def test_families_in_turn_load_each_generation_as_its_own_familys_model(tmp_path: Path) -> None:
    from conftest import run_chain

    from imgcollapse.models.gmm import GMM
    from imgcollapse.models.vae import VAE

    run_dir = tmp_path / "run"
    run_chain(run_dir, *FAST, "chain.models=[model,vae]")  # `model`: model's own family (gmm)
    for g, family in ((0, GMM), (1, VAE)):
        model = imgcollapse.load_model(run_dir, g)
        assert type(model) is family
        samples, strip = _samples(run_dir, g)
        drawn, drawn_strip = _draws(model, g, len(samples), len(strip))
        assert torch.equal(drawn, samples) and torch.equal(drawn_strip, strip)
    # a row without its family column: the config's schedule says whose generation it is
    row_file = run_dir / "gen_001" / "metrics.json"
    row = json.loads(row_file.read_text())
    assert row.pop("family") == "vae"
    row_file.write_text(json.dumps(row))
    assert type(imgcollapse.load_model(run_dir, 1)) is VAE


def test_a_users_regime_owns_its_keys_and_checks(tmp_path: Path, my_conf: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    """A regime added in its own file and YAML trains a chain, and its own checks (one before the data, one that
    needs it) name its key; the kit's config.py knows nothing of it."""
    monkeypatch.chdir(tmp_path)
    base = ("debug=smoke", "generation=1", "threads=1", "report.draw=false", "model=pixels", "dataset=stripes",
            "regime=anchored", f"hydra.searchpath=[file://{my_conf}]")
    rows = imgcollapse.run_chain(imgcollapse.compose(*base))
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    assert rows[1]["num_real"] == 40 and rows[1]["num_synthetic"] == 64 and rows[1]["num_train"] == 104
    with pytest.raises(ConfigError, match=r"regime.anchor=-1 .*>= 0"):
        imgcollapse.run_chain(imgcollapse.compose(*base, "regime.anchor=-1"))
    with pytest.raises(ConfigError, match=r"regime.anchor=5000 .*at most the real pool's 300"):
        imgcollapse.run_chain(imgcollapse.compose(*base, "regime.anchor=5000", "seed=1"))
    assert "anchored" not in Path(imgcollapse.config.__file__).read_text().lower()
    # a regime shares generation 0 across its own keys only where it says its first set is the pool
    from imgcollapse.resume import generation0_signature

    record = json.loads(next((tmp_path / "outputs").glob("*/run.json")).read_text())
    assert "regime.anchor" in generation0_signature(record["config"])
