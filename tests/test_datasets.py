"""Datasets through the real `dataset=` configs, with no network: tiny files in the exact formats torchvision
reads (MNIST IDX, CIFAR-10 pickle batches), folders of generated images, corrupt files, the long tail."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, make_model, run_chain, run_cli
from PIL import Image

from imgcollapse.config import ConfigError, UserError, build, validate
from imgcollapse.data import ImageSet, Splits
from imgcollapse.data.torchvision_sets import layout
from imgcollapse.data.transforms import class_counts, long_tail, long_tail_counts
from imgcollapse.metrics.features import train_classifier

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`


def load(*overrides: str) -> Splits:
    """Compose, validate and build the dataset exactly as `imgcollapse.run` does."""
    return build(validate(compose_config(*overrides)).dataset)


# Tiny torchvision-format files -------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file (big-endian header: 0, 0, type 0x08 = uint8, ndim; then each dimension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images whose brightness depends on the class, and their labels (every class present)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, (n, *shape)) + (labels * 20).reshape(-1, *[1] * len(shape))
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> tuple[Path, dict]:
    """MNIST and FashionMNIST raw folders with 60 training and 30 test images each."""
    root = tmp_path_factory.mktemp("tv")
    arrays = {}
    for folder in ("MNIST", "FashionMNIST"):
        for prefix, n, seed in (("train", 60, 1), ("t10k", 30, 2)):
            images, labels = fake_images(n, (28, 28), seed)
            write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
            write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
            arrays[prefix] = (images, labels)
    return root, arrays


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """cifar-10-batches-py with five 10-image training batches, a 20-image test batch and batches.meta."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    train = []
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        images, labels = fake_images(20 if name == "test_batch" else 10, (3, 32, 32), seed=10 + i)
        entry = {"batch_label": name, "labels": labels.tolist(), "data": images.reshape(len(images), -1),
                 "filenames": [f"{name}_{j}.png" for j in range(len(images))]}
        (folder / name).write_bytes(pickle.dumps(entry))
        if name != "test_batch":
            train.append(images)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}))
    return root, np.concatenate(train)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_idx_files_load_through_the_config(mnist_root, name):
    root, arrays = mnist_root
    splits = load(f"dataset={name}", f"dataset.root={root}", "dataset.download=false")
    assert splits.train.shape == (1, 28, 28) and len(splits.train) == 60 and len(splits.heldout) == 30
    assert torch.equal(splits.train.images[:, 0], torch.from_numpy(arrays["train"][0]))  # train split -> pool
    assert torch.equal(splits.heldout.labels, torch.from_numpy(arrays["t10k"][1]).long())  # test -> held out
    assert splits.train.num_classes == 10
    assert splits.info["class_counts"]["train"] == [6] * 10


def test_limit_is_a_fixed_seed_class_balanced_subset(mnist_root):
    root, _ = mnist_root
    args = ("dataset=mnist", f"dataset.root={root}", "dataset.download=false", "dataset.limit=20",
            "dataset.num_heldout=10", "dataset.image_size=32", "dataset.channels=3")
    a, b = load(*args), load(*args)
    assert len(a.train) == 20 and len(a.heldout) == 10
    assert class_counts(a.train) == [2] * 10 and class_counts(a.heldout) == [1] * 10
    assert torch.equal(a.train.images, b.train.images)  # same seed, same subset
    assert a.train.shape == (3, 32, 32)
    other = load(*args, "dataset.split_seed=1")
    assert not torch.equal(a.train.images, other.train.images)


def test_cifar10_batches_load_through_the_config(cifar_root):
    root, train = cifar_root
    splits = load("dataset=cifar10", f"dataset.root={root}", "dataset.download=false", "dataset.verify_md5=false")
    assert splits.train.shape == (3, 32, 32) and len(splits.train) == 50 and len(splits.heldout) == 20
    assert torch.equal(splits.train.images, torch.from_numpy(train))  # channel-first rows, as CIFAR stores them
    assert splits.train.class_names[0] == "airplane" and splits.train.num_classes == 10
    grey = load("dataset=cifar10", f"dataset.root={root}", "dataset.download=false", "dataset.verify_md5=false",
                "dataset.channels=1", "dataset.image_size=16")
    assert grey.train.shape == (1, 16, 16)


def test_cifar10_md5_check_names_the_way_out(cifar_root):
    root, _ = cifar_root
    with pytest.raises(UserError, match="verify_md5=false"):
        load("dataset=cifar10", f"dataset.root={root}", "dataset.download=false")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_ddpm_and_metrics_classifier_take_each_shape(mnist_root, cifar_root, name):
    """28×28 grey and 32×32 colour: the UNet trains and samples, the classifier trains and scores."""
    root = (mnist_root if name == "mnist" else cifar_root)[0]
    extra = ["dataset.verify_md5=false"] if name == "cifar10" else []
    splits = load(f"dataset={name}", f"dataset.root={root}", "dataset.download=false", *extra)
    model = make_model("ddpm", splits.train.shape, sampling={"steps": 1}, train_steps=2, batch_size=4, warmup_steps=1)
    model.fit(splits.train, seed=0)
    assert model.sample(3, seed=0).images.shape == (3, *splits.train.shape)
    classifier = train_classifier(splits.train, splits.heldout, epochs=1)
    features, probs = classifier(splits.heldout.images)
    assert features.shape == (len(splits.heldout), 128) and probs.shape == (len(splits.heldout), 10)
    assert 0 <= classifier.accuracy <= 1


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_offline_error_names_the_files_and_folder(tmp_path, name):
    with pytest.raises(UserError) as info:
        load(f"dataset={name}", f"dataset.root={tmp_path}", "dataset.download=false")
    message = str(info.value)
    where = layout(name)
    assert f"dataset={name}" in message and "dataset.root" in message
    assert str(tmp_path / where.folder) in message
    for file in where.files:
        assert file in message


def test_failed_download_is_a_user_error(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")  # torchvision cannot create MNIST/raw under it: the download fails at once
    with pytest.raises(UserError, match="the download failed"):
        load("dataset=mnist", f"dataset.root={not_a_folder}", "dataset.download=true")


def test_offline_run_stops_before_training(tmp_path):
    result = run_cli("debug=smoke", "dataset=mnist", f"dataset.root={tmp_path / 'none'}", "dataset.download=false",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "train-images-idx3-ubyte" in output and "dataset.root" in output
    assert "Traceback" not in output
    assert not list((tmp_path / "run").glob("gen_*"))


# Folders of images -------------------------------------------------------------------------------
def solid(colour: tuple[int, int, int], size: tuple[int, int], seed: int) -> Image.Image:
    """An RGB image of one colour with a little noise, so files differ."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-10, 10, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_folder(root: Path, classes: dict[str, int] | None, size=(40, 30), fmt="png") -> Path:
    """`classes` images per class subfolder, or (None) ten loose images; colours depend on the class."""
    root.mkdir(parents=True, exist_ok=True)
    groups = classes or {"": 10}
    for c, (name, count) in enumerate(groups.items()):
        folder = root / name
        folder.mkdir(exist_ok=True)
        for i in range(count):
            solid((40 + 80 * c, 200 - 60 * c, 90), size, seed=100 * c + i).save(folder / f"{i:03d}.{fmt}")
    return root


def test_labelled_folder_of_mixed_formats(tmp_path):
    root = make_folder(tmp_path / "imgs", {"cats": 4, "dogs": 5})
    solid((0, 0, 250), (20, 20), 1).convert("L").save(root / "cats" / "grey.png")
    solid((0, 250, 0), (33, 21), 2).convert("RGBA").save(root / "cats" / "alpha.png")
    (root / "dogs" / "nested").mkdir()
    solid((250, 0, 0), (64, 48), 3).save(root / "dogs" / "nested" / "photo.JPG", quality=90)
    solid((250, 0, 0), (16, 16), 4).save(root / "dogs" / "x.bmp")
    solid((250, 0, 0), (16, 16), 5).save(root / "dogs" / "x.webp")
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    frames[0].save(root / "dogs" / "anim.gif", save_all=True, append_images=frames[1:])
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    solid((0, 0, 0), (8, 8), 6).save(root / ".hidden" / "skip.png")

    splits = load("dataset=folder", f"dataset.path={root}", "dataset.image_size=16", "dataset.heldout_fraction=0.25")
    data = ImageSet.concat([splits.train, splits.heldout])
    assert len(data) == 15 and splits.train.shape == (3, 16, 16)
    assert splits.train.class_names == ["cats", "dogs"]
    assert class_counts(data) == [6, 9]
    assert sum(class_counts(splits.heldout)) == 4 and min(class_counts(splits.heldout)) >= 1  # 25%, every class
    assert splits.info["skipped_files"] == 0 and splits.info["num_files"] == 15

    grey = load("dataset=folder", f"dataset.path={root}", "dataset.image_size=8", "dataset.channels=1")
    assert grey.train.shape == (1, 8, 8)


def test_gif_uses_its_first_frame(tmp_path):
    root = tmp_path / "gif"
    root.mkdir()
    for i in range(4):
        frames = [Image.new("RGB", (12, 12), (250, 0, 0)), Image.new("RGB", (12, 12), (0, 0, 250))]
        frames[0].save(root / f"{i}.gif", save_all=True, append_images=frames[1:])
    splits = load("dataset=folder", f"dataset.path={root}", "dataset.image_size=8")
    red, _, blue = splits.train.images.float().mean(dim=(0, 2, 3)).tolist()
    assert red > 200 and blue < 50


def test_unlabelled_folder_resized_and_center_cropped(tmp_path):
    root = make_folder(tmp_path / "flat", None, size=(60, 30), fmt="jpg")
    splits = load("dataset=folder", f"dataset.path={root}", "dataset.image_size=12", "dataset.heldout_fraction=0.3")
    assert splits.train.labels is None and splits.train.class_names is None
    assert len(splits.train) == 7 and len(splits.heldout) == 3
    assert splits.train.shape == (3, 12, 12)  # 60x30 -> shorter side 12 -> center 12x12
    assert "class_counts" not in splits.info


def corrupt_folder(root: Path) -> Path:
    make_folder(root, {"a": 5, "b": 5})
    good = root / "a" / "000.png"
    (root / "a" / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (root / "b" / "garbage.jpg").write_bytes(b"this is not a jpeg")
    return root


def test_corrupt_files_are_named_and_counted(tmp_path):
    root = corrupt_folder(tmp_path / "bad")
    with pytest.raises(UserError) as info:
        load("dataset=folder", f"dataset.path={root}", "dataset.image_size=8")
    message = str(info.value)
    assert "2 of 12" in message and "truncated.png" in message and "garbage.jpg" in message
    assert "dataset.skip_bad=true" in message
    splits = load("dataset=folder", f"dataset.path={root}", "dataset.image_size=8", "dataset.skip_bad=true")
    assert len(splits.train) + len(splits.heldout) == 10
    assert splits.info["skipped_files"] == 2
    assert {Path(p).name for p in splits.info["skipped_examples"]} == {"truncated.png", "garbage.jpg"}


def test_skip_bad_is_recorded_in_run_json(tmp_path):
    root = corrupt_folder(tmp_path / "bad")
    run_chain(tmp_path / "run", "debug=smoke", "generation=0", "num_synthetic=8", "dataset=folder",
              f"dataset.path={root}", "dataset.image_size=8", "dataset.skip_bad=true", "dataset.heldout_fraction=0.3")
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["dataset"]["skipped_files"] == 2 and meta["dataset"]["source"] == "folder"


@pytest.mark.parametrize("count", [0, 1])
def test_empty_or_single_image_folder_is_a_clear_error(tmp_path, count):
    root = tmp_path / "few"
    root.mkdir()
    (root / "readme.txt").write_text("no images here")
    for i in range(count):
        solid((1, 2, 3), (8, 8), i).save(root / f"{i}.png")
    with pytest.raises(UserError, match="no image files" if count == 0 else "at least 2"):
        load("dataset=folder", f"dataset.path={root}")


def test_folder_needs_a_path_and_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="dataset.path"):
        load("dataset=folder")
    with pytest.raises(UserError, match="not a folder"):
        load("dataset=folder", f"dataset.path={tmp_path / 'missing'}")


def test_decoded_folder_is_cached_by_content_and_transform(tmp_path, cache_dir):
    root = make_folder(tmp_path / "cached", {"a": 3, "b": 3})
    entries = lambda: sorted((cache_dir / "datasets" / "folder").glob("cached-*.npz"))  # noqa: E731
    first = load("dataset=folder", f"dataset.path={root}", "dataset.image_size=8")
    assert len(entries()) == 1
    stamp = entries()[0].stat().st_mtime_ns
    again = load("dataset=folder", f"dataset.path={root}", "dataset.image_size=8")
    assert torch.equal(first.train.images, again.train.images) and entries()[0].stat().st_mtime_ns == stamp
    load("dataset=folder", f"dataset.path={root}", "dataset.image_size=16")  # another transform
    assert len(entries()) == 2
    solid((9, 9, 9), (50, 50), 7).save(root / "a" / "000.png")  # a changed file
    changed = load("dataset=folder", f"dataset.path={root}", "dataset.image_size=8")
    assert len(entries()) == 3
    assert not torch.equal(ImageSet.concat([changed.train, changed.heldout]).images,
                           ImageSet.concat([first.train, first.heldout]).images)


# Long tail ---------------------------------------------------------------------------------------
def follows_zipf(counts: list[int], exponent: float) -> bool:
    """Class k has class 0's count times (k+1)^-exponent, up to rounding."""
    return all(abs(n - counts[0] * (k + 1) ** -exponent) <= 1.0 for k, n in enumerate(counts))


@pytest.mark.parametrize("exponent", [0.5, 1.0, 2.0])
def test_long_tail_tails_the_pool_and_keeps_every_class_in_the_held_out_split_and_floor(exponent):
    balanced = load("dataset=digits")
    splits = load("dataset=digits", f"dataset.long_tail={exponent}")
    order = splits.info["tail_order"]  # the classes from the most to the least frequent, drawn by the seed
    assert sorted(order) == list(range(10)) and order != list(range(10))
    train = [class_counts(splits.train)[k] for k in order]
    assert follows_zipf(train, exponent)
    assert train == sorted(train, reverse=True) and min(train) >= 1
    assert torch.equal(splits.ruler_pool.images, balanced.train.images)  # one ruler for every arm: the whole pool
    available = [class_counts(balanced.train)[k] for k in order]
    assert all(n <= a for n, a in zip(train, available, strict=True))
    assert any(a - n <= 1 for n, a in zip(train, available, strict=True))  # as many as the classes allow
    # held out before the tail: every class keeps ~num_heldout / 10 images, so tail classes are scored against
    # enough real images (and the held-out covariance stays full rank); the floor is drawn the same way
    assert class_counts(splits.heldout) == class_counts(balanced.heldout) and min(class_counts(splits.heldout)) >= 39
    assert min(class_counts(splits.floor)) >= 39 and len(splits.floor) == len(splits.heldout)
    assert splits.info["class_counts"]["floor"] == class_counts(splits.floor)


def test_which_classes_are_rare_is_drawn_from_the_chains_seed():
    orders = {tuple(load("dataset=digits", "dataset.long_tail=1", f"seed={seed}").info["tail_order"])
              for seed in (3, 4, 5)}
    assert len(orders) == 3  # each seed its own rare classes: a class's difficulty does not read as rarity
    indexed = load("dataset=digits", "dataset.long_tail=1", "dataset.tail_seed=null")
    assert indexed.info["tail_order"] == list(range(10))
    assert class_counts(indexed.train) == sorted(class_counts(indexed.train), reverse=True)
    assert "tail_order" not in load("dataset=digits").info and load("dataset=digits").ruler_pool is None


def test_long_tail_zero_keeps_everything_and_is_seeded():
    data = load("dataset=digits").train
    assert torch.equal(load("dataset=digits", "dataset.long_tail=0").train.images, data.images)
    a, b, c = long_tail(data, 1.0, seed=0), long_tail(data, 1.0, seed=0), long_tail(data, 1.0, seed=1)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert long_tail_counts([100, 0, 100], 1.0) == [100, 0, 33]


def test_long_tail_on_torchvision_and_labelled_folder(mnist_root, tmp_path):
    root, _ = mnist_root
    splits = load("dataset=mnist", f"dataset.root={root}", "dataset.download=false", "dataset.long_tail=1",
                  "dataset.tail_seed=null")
    assert class_counts(splits.train) == [6, 3, 2, 2, 1, 1, 1, 1, 1, 1]
    folder = make_folder(tmp_path / "tail", {"a": 12, "b": 12, "c": 12})
    tail = load("dataset=folder", f"dataset.path={folder}", "dataset.image_size=8", "dataset.long_tail=1",
                "dataset.heldout_fraction=0.25")
    ranked = [class_counts(tail.train)[k] for k in tail.info["tail_order"]]
    assert ranked[0] == 9 and follows_zipf(ranked, 1.0)
    assert class_counts(tail.heldout) == [3, 3, 3]  # held out before the tail: every class keeps its share


def test_long_tail_needs_labels(tmp_path):
    root = make_folder(tmp_path / "flat", None)
    with pytest.raises(UserError, match="long_tail"):
        load("dataset=folder", f"dataset.path={root}", "dataset.image_size=8", "dataset.long_tail=1")
    with pytest.raises(ConfigError, match="dataset.long_tail"):
        load("dataset=digits", "dataset.long_tail=-1")


# Sizes the UNet cannot take, and a chain on colour images ----------------------------------------
def test_size_the_unet_cannot_take_fails_at_start(tmp_path):
    root = make_folder(tmp_path / "odd", {"a": 3, "b": 3})
    with pytest.raises(ConfigError) as info:
        load("dataset=folder", f"dataset.path={root}", "dataset.image_size=30", "model.block_out_channels=[32,48,64]")
    assert "dataset.image_size=30" in str(info.value) and "multiple of 4" in str(info.value)
    with pytest.raises(ConfigError, match="dataset.image_size=28"):
        load("dataset=mnist", "model.block_out_channels=[16,16,16,16]")


def test_two_generation_chain_on_a_colour_folder(tmp_path):
    root = make_folder(tmp_path / "colour", {"red": 16, "green": 16, "blue": 16}, size=(36, 32))
    # smoke, shrunk further: 32x32 colour costs 16x the pixels of the 8x8 digits smoke is sized for
    rows = run_chain(tmp_path / "run", "debug=smoke", "generation=1", "dataset=folder", f"dataset.path={root}",
                     "model.train_steps=4", "model.batch_size=8", "num_synthetic=16", "sampling.steps=2")
    assert [r["generation"] for r in rows] == [0, 1]
    assert all(np.isfinite(r["fid"]) for r in rows)
    assert rows[0]["num_train"] == 38 and rows[1]["num_train"] == 16
    samples = ImageSet.load(tmp_path / "run" / "gen_001" / "samples.npz")
    assert samples.images.shape == (16, 3, 32, 32) and samples.labels is not None
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["dataset"]["image_shape"] == [3, 32, 32]
    assert meta["dataset"]["class_names"] == ["blue", "green", "red"]
    counts = meta["dataset"]["class_counts"]
    assert sum(counts["heldout"]) == 10
    assert [a + b for a, b in zip(counts["train"], counts["heldout"], strict=True)] == [16] * 3
    assert sum(counts["floor"]) == 10  # the real floor: the held-out size, drawn from the pool


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("dataset=mnist", "dataset.limit=5"), "dataset.limit"),
        (("dataset=fashion_mnist", "dataset.num_heldout=0"), "dataset.num_heldout"),
        (("dataset=mnist", "dataset.name=svhn"), "dataset.name"),
        (("dataset=cifar10", "dataset.channels=2"), "dataset.channels"),
        (("dataset=folder", "dataset.path=/x", "dataset.heldout_fraction=1.5"), "dataset.heldout_fraction"),
        (("dataset=folder", "dataset.path=/x", "dataset.split_seed=-1"), "dataset.split_seed"),
    ],
)
def test_bad_dataset_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        validate(compose_config(*overrides))
    assert info.value.key == key
