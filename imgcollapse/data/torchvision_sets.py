"""MNIST, FashionMNIST and CIFAR-10 through torchvision's own dataset classes.

torchvision's train split is the training pool and its test split the held-out split; `limit` and
`num_heldout` take fixed-seed, class-stratified subsets of them for CPU-sized runs. When the files are
absent and cannot be downloaded (no network), the run stops with a message naming the files and the
folder torchvision expects them in.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from omegaconf import MISSING
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST, VisionDataset

from imgcollapse.data import DatasetConfig, ImageSet, Splits
from imgcollapse.data.transforms import finish, resize, take, to_channels
from imgcollapse.errors import DamagedFile, UserError, require

log = logging.getLogger(__name__)


# What the official CIFAR-10 batches (Python 2 pickles of dicts of numpy arrays, lists and strings) ask a pickle for;
# `_frombuffer` is what numpy writes for protocol-5 pickles of a re-packed copy. Nothing here can run code.
SAFE_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as Python 3 protocol-2 pickles use it for bytes, and nothing more (no other codec)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not bytes data")
    return text.encode("latin1")


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain Python values only: no other class or function is called."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # the official batches are Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):  # bytes in a protocol-2 re-pack made with Python 3
            return _latin1_bytes
        raise DamagedFile(self.path, f"its pickle asks for {module}.{name}, which no CIFAR-10 batch contains: the "
                                     f"file is not CIFAR-10 data and may be an attempt to run code",
                          "Replace it with the official file; dataset.verify_md5=true checks it against the release.")


def _text(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def load_cifar_batch(path: Path) -> dict[str, Any]:
    """One CIFAR-10 batch or meta file as a dict with str keys, read without unpickling arbitrary objects."""
    try:
        with open(path, "rb") as f:
            entry = _ArraysOnly(f, path).load()
    except DamagedFile:
        raise
    except Exception as e:  # truncated or not a pickle: UnpicklingError, EOFError, ValueError...
        raise DamagedFile(path, e, "Replace it with the official CIFAR-10 file.") from e
    if not isinstance(entry, dict):
        raise DamagedFile(path, f"a pickled {type(entry).__name__}, not a dict", "Replace it with the official file.")
    return {_text(k): v for k, v in entry.items()}


class CIFAR10Unverified(CIFAR10):
    """torchvision's CIFAR10 without the official md5 check: the batch files must be present, and are read by an
    unpickler that builds arrays only (torchvision's `pickle.load` would run whatever code an unchecked file holds)."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        VisionDataset.__init__(self, root)
        self.train = train
        if download:
            self.download()  # fetches the official archive, md5-checked, when the files are absent
        if not self._check_integrity():
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        folder = Path(self.root) / self.base_folder
        data, targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            entry = load_cifar_batch(folder / name)
            images, labels = entry.get("data"), entry.get("labels", entry.get("fine_labels"))
            if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2
                    or images.shape[1] != 3 * 32 * 32 or labels is None or len(labels) != len(images)):
                raise DamagedFile(folder / name, "not a CIFAR-10 batch (a dict with uint8 `data` N×3072 and N "
                                                 "`labels`)", "Replace it with the official file.")
            data.append(images)
            targets.extend(int(label) for label in labels)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision keeps it
        self.targets = targets
        names = load_cifar_batch(folder / self.meta["filename"]).get(self.meta["key"])
        if not isinstance(names, (list, tuple)):
            raise DamagedFile(folder / self.meta["filename"], f"no `{self.meta['key']}` list",
                              "Replace it with the official file.")
        self.classes = [str(_text(n)) for n in names]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


@dataclass(frozen=True)
class Layout:
    """Where torchvision looks for a dataset's files under `root`, and what it can extract them from."""

    folder: str  # relative to root
    files: tuple[str, ...]  # what the dataset class reads
    archives: str  # what a user can place instead: torchvision extracts it when download=true


def _mnist_layout(cls: type[MNIST]) -> Layout:
    names = tuple(os.path.splitext(name)[0] for name, _ in cls.resources)
    return Layout(f"{cls.__name__}/raw", names, f"put the .gz files ({', '.join(n + '.gz' for n in names)}) there")


def _cifar_layout(cls: type[CIFAR10]) -> Layout:
    names = tuple(name for name, _ in cls.train_list + cls.test_list) + (cls.meta["filename"],)
    return Layout(cls.base_folder, names, f"put {cls.filename} in dataset.root itself")


NAMES = {"mnist": MNIST, "fashion_mnist": FashionMNIST, "cifar10": CIFAR10}


def layout(name: str) -> Layout:
    """The files and folder torchvision expects for dataset `name`."""
    cls = NAMES[name]
    return _cifar_layout(cls) if issubclass(cls, CIFAR10) else _mnist_layout(cls)


def _not_found(name: str, root: Path, download: bool, error: Exception) -> UserError:
    """The message a user needs when torchvision cannot find or fetch the files."""
    where = layout(name)
    folder = root / where.folder
    missing = [f for f in where.files if not (folder / f).is_file()]
    reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    if not missing:
        hint = ("every file is there, so one is corrupt or not the official release"
                + (" (torchvision checks CIFAR-10's md5 sums: dataset.verify_md5=false accepts another copy)"
                   if name == "cifar10" else ""))
        return UserError(f"dataset={name}: torchvision could not read the files in {folder}: {reason}; {hint}")
    how = f"the download failed ({reason})" if download else "dataset.download=false"
    return UserError(
        f"dataset={name}: torchvision's files are not in {folder} and {how}. Missing: {', '.join(missing)}. "
        f"Place them in that folder (or {where.archives} and keep dataset.download=true: torchvision extracts "
        f"them), or set dataset.root to the folder that holds {where.folder}/ (now dataset.root={root})."
    )


def _read(name: str, root: Path, train: bool, download: bool, verify_md5: bool) -> VisionDataset:
    cls = CIFAR10Unverified if name == "cifar10" and not verify_md5 else NAMES[name]
    try:
        return cls(str(root), train=train, download=download)
    except UserError:
        raise  # already names the file and what to do
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, pickle and assertion errors
        raise _not_found(name, root, download, e) from e


def _to_imageset(dataset: VisionDataset) -> ImageSet:
    """torchvision's decoded arrays (`data`, `targets`, `classes`) as an ImageSet, without a PIL round trip."""
    data = torch.as_tensor(np.asarray(dataset.data))
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # MNIST N×H×W, CIFAR N×H×W×C
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)
    return ImageSet(images.contiguous(), labels, [str(c) for c in dataset.classes])


def load_torchvision(config: TorchvisionConfig) -> Splits:
    """Load torchvision's train split as the training pool and its test split as the held-out split."""
    name, root, download, image_size, channels = (config.name, config.root, config.download, config.image_size,
                                                  config.channels)
    limit, num_heldout, split_seed, long_tail = config.limit, config.num_heldout, config.split_seed, config.long_tail
    verify_md5 = getattr(config, "verify_md5", True)  # CIFAR10Config's own key
    config.check()  # the same checks as config.validate, for a caller that skipped it
    root_path = Path(root).expanduser()
    parts = {}
    for split_name, train, cap in (("train", True, limit), ("heldout", False, num_heldout)):
        data = take(_to_imageset(_read(name, root_path, train, download, verify_md5)), cap, split_seed)
        parts[split_name] = ImageSet(to_channels(resize(data.images, image_size), channels), data.labels,
                                     data.class_names)
    log.info("dataset=%s from %s: %d training, %d held-out images", name, root_path / layout(name).folder,
             len(parts["train"]), len(parts["heldout"]))
    info = {"source": f"torchvision {NAMES[name].__name__}", "root": str(root_path)}
    return finish(Splits(parts["train"], parts["heldout"]), long_tail, split_seed, info, tail_seed=config.tail_seed,
                  pool_size=config.pool_size, pool_seed=config.pool_seed)


@dataclass
class TorchvisionConfig(DatasetConfig):
    """`dataset=mnist` / `fashion_mnist` (values and their reasons: conf/dataset/<name>.yaml)."""

    _target_: str = "imgcollapse.data.torchvision_sets.load_torchvision"
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    limit: int | None = MISSING
    num_heldout: int | None = MISSING

    def check(self) -> None:
        super().check()
        require(self.name in NAMES, "dataset.name", self.name, f"one of {sorted(NAMES)}")
        require(bool(self.root), "dataset.root", self.root, "the folder torchvision reads (and downloads into)")
        require(self.limit is None or self.limit >= 10, "dataset.limit", self.limit,
                "null (torchvision's whole train split) or an integer ≥ 10 (one image per class)")
        require(self.num_heldout is None or self.num_heldout >= 10, "dataset.num_heldout", self.num_heldout,
                "null (torchvision's whole test split) or an integer ≥ 10 (one image per class)")


@dataclass
class CIFAR10Config(TorchvisionConfig):
    """`dataset=cifar10`: torchvision's keys plus whether the batch files' md5 sums are checked."""

    verify_md5: bool = MISSING
