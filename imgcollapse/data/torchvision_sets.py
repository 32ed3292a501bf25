"""MNIST, FashionMNIST and CIFAR-10 through torchvision's own dataset classes.

torchvision's train split is the training pool and its test split the held-out split; `limit` and
`num_heldout` take fixed-seed, class-stratified subsets of them for CPU-sized runs. When the files are
absent and cannot be downloaded (no network), the run stops with a message naming the files and the
folder torchvision expects them in.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST, VisionDataset

from imgcollapse.config import UserError
from imgcollapse.data import ImageSet, Splits
from imgcollapse.data.transforms import finish, resize, take, to_channels

log = logging.getLogger(__name__)


class CIFAR10Unverified(CIFAR10):
    """torchvision's CIFAR10, checking that the batch files are present but not their official md5 sums."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


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
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, pickle and assertion errors
        raise _not_found(name, root, download, e) from e


def _to_imageset(dataset: VisionDataset) -> ImageSet:
    """torchvision's decoded arrays (`data`, `targets`, `classes`) as an ImageSet, without a PIL round trip."""
    data = torch.as_tensor(np.asarray(dataset.data))
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # MNIST N×H×W, CIFAR N×H×W×C
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)
    return ImageSet(images.contiguous(), labels, [str(c) for c in dataset.classes])


def load_torchvision(
    name: str,
    root: str,
    download: bool = True,
    image_size: int = 28,
    channels: int = 1,
    limit: int | None = None,
    num_heldout: int | None = None,
    split_seed: int = 0,
    long_tail: float = 0.0,
    verify_md5: bool = True,
) -> Splits:
    """Load torchvision's train split as the training pool and its test split as the held-out split."""
    if name not in NAMES:
        raise UserError(f"dataset.name={name!r} is not one of {sorted(NAMES)}")
    root_path = Path(root).expanduser()
    parts = {}
    for split_name, train, cap in (("train", True, limit), ("heldout", False, num_heldout)):
        data = take(_to_imageset(_read(name, root_path, train, download, verify_md5)), cap, split_seed)
        parts[split_name] = ImageSet(to_channels(resize(data.images, image_size), channels), data.labels,
                                     data.class_names)
    log.info("dataset=%s from %s: %d training, %d held-out images", name, root_path / layout(name).folder,
             len(parts["train"]), len(parts["heldout"]))
    info = {"source": f"torchvision {NAMES[name].__name__}", "root": str(root_path)}
    return finish(Splits(parts["train"], parts["heldout"]), long_tail, split_seed, info)
