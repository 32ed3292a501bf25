"""Resizing, channel conversion and the one-time train/held-out split."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from imgcollapse.data import ImageSet, Splits
from imgcollapse.errors import UserError


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 N×C×H×W images to size×size (bilinear, antialiased when shrinking)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert uint8 N×C×H×W to 1 (luma) or 3 (repeated grey) channels."""
    c = images.shape[1]
    if c == channels:
        return images
    if channels == 3 and c == 1:
        return images.repeat(1, 3, 1, 1)
    if channels == 1 and c == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def split(data: ImageSet, num_heldout: int, seed: int) -> Splits:
    """Split once by a fixed seed, stratified by class when labelled, into training pool and held-out set."""
    if not 0 < num_heldout < len(data):
        raise ValueError(f"dataset.num_heldout={num_heldout} must be between 1 and {len(data) - 1}")
    index = np.arange(len(data))
    stratify = data.labels.numpy() if data.labels is not None else None
    train_idx, heldout_idx = train_test_split(index, test_size=num_heldout, random_state=seed, stratify=stratify)
    return Splits(data.subset(np.sort(train_idx)), data.subset(np.sort(heldout_idx)))


def take(data: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """A fixed-seed subset of at most `limit` images, stratified by class when labelled (None: all)."""
    if limit is None or limit >= len(data):
        return data
    index = np.arange(len(data))
    stratify = data.labels.numpy() if data.labels is not None else None
    kept, _ = train_test_split(index, train_size=limit, random_state=seed, stratify=stratify)
    return data.subset(np.sort(kept))


def class_counts(data: ImageSet) -> list[int] | None:
    """Images per class, in class-index order (None for unlabelled data)."""
    if data.labels is None or data.num_classes is None:
        return None
    return torch.bincount(data.labels, minlength=data.num_classes).tolist()


def long_tail_counts(available: list[int], exponent: float, order: list[int] | None = None) -> list[int]:
    """Zipf-style class sizes: the class of rank r keeps about m·(r+1)^-exponent images, m as large as `available`
    allows; `order` lists the classes from the most to the least frequent (None: by index, class 0 the most).

    Every class that has images keeps at least one.
    """
    order = list(range(len(available))) if order is None else [int(k) for k in order]
    weights = np.empty(len(available))
    weights[order] = (np.arange(len(available)) + 1.0) ** -exponent
    present = [k for k, a in enumerate(available) if a > 0]
    if not present:
        return [0] * len(available)
    scale = min(available[k] / weights[k] for k in present)
    return [max(1, round(scale * weights[k])) if available[k] > 0 else 0 for k in range(len(available))]


def tail_order(num_classes: int, tail_seed: int | None) -> list[int]:
    """The classes from the most to the least frequent in a long tail: drawn by `tail_seed`, so that across a
    study's seeds the rare classes are not always the same ones (whose difficulty would read as rarity); None: by
    class index."""
    if tail_seed is None:
        return list(range(num_classes))
    return [int(k) for k in np.random.default_rng(np.random.SeedSequence([tail_seed, 13])).permutation(num_classes)]


def long_tail(data: ImageSet, exponent: float, seed: int, tail_seed: int | None = None) -> ImageSet:
    """Subsample a labelled set so the class of rank r has about (r+1)^-exponent times the images of the first
    (0: as is); the ranks are `tail_order(tail_seed)`."""
    if exponent == 0:
        return data
    if data.labels is None or data.num_classes is None:
        raise ValueError("a long tail needs class labels")
    labels = data.labels.numpy()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    counts = long_tail_counts(class_counts(data), exponent, tail_order(data.num_classes, tail_seed))  # type: ignore[arg-type]
    kept = [rng.choice(np.flatnonzero(labels == k), n, replace=False) for k, n in enumerate(counts) if n]
    return data.subset(np.sort(np.concatenate(kept)))


def floor_split(pool: ImageSet, size: int, seed: int) -> ImageSet:
    """The real floor's images: a fixed-seed subset of the pool, class-stratified, of the held-out split's size
    (at most half the pool). The generative model may train on them; the metrics classifier does not."""
    size = min(size, len(pool) // 2)
    index = np.arange(len(pool))
    stratify = pool.labels.numpy() if pool.labels is not None else None
    try:
        kept, _ = train_test_split(index, train_size=size, random_state=seed + 3, stratify=stratify)
    except ValueError:  # a class with a single image cannot be stratified: draw without strata
        kept, _ = train_test_split(index, train_size=size, random_state=seed + 3)
    return pool.subset(np.sort(kept))


def floor_of(pool: ImageSet, heldout: ImageSet, floor: ImageSet | None) -> ImageSet:
    """The real floor's images: the loader's (`Splits.floor`), or for splits made without one, drawn from the pool
    as every user of the floor (metrics, calibration, verifier) draws it."""
    return floor if floor is not None else floor_split(pool, len(heldout), 0)


def long_tail_splits(splits: Splits, exponent: float, seed: int, tail_seed: int | None = None) -> Splits:
    """The long tail on the training pool only. The held-out split and the floor are drawn first and keep every
    class (about num_heldout / K images each), so tail classes are scored against enough real images and the
    held-out covariance stays full rank; the balanced pool is kept as `ruler_pool`, so the metrics classifier that
    scores a long-tailed arm is the one that scores every other arm."""
    if exponent == 0:
        return splits
    return Splits(long_tail(splits.train, exponent, seed, tail_seed), splits.heldout, splits.info, splits.floor,
                  ruler_pool=splits.train)


def nested_take(data: ImageSet, size: int, seed: int) -> ImageSet:
    """`size` images drawn by `seed`, each class keeping its share (within two images), such that a smaller size's
    images are among a larger one's: a scaling curve's pools are nested, so its points differ by data added only.
    One seeded order serves every size (its first `size`): within a class the images come in a random order, and
    the classes interleave by the share of their images already taken, so every prefix is stratified."""
    if size >= len(data):
        return data
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    order = rng.permutation(len(data))
    if data.labels is None:
        return data.subset(np.sort(order[:size]))
    labels = data.labels.numpy()[order]
    counts = np.bincount(labels)
    rank = np.empty(len(order), dtype=float)
    for k in range(len(counts)):
        rank[labels == k] = np.arange(counts[k])
    offset = rng.random(len(counts))  # where in its stride each class starts, so ties fall a different way per seed
    position = (rank + offset[labels]) / np.maximum(counts[labels], 1)
    return data.subset(np.sort(order[np.argsort(position, kind="stable")[:size]]))


def finish(splits: Splits, exponent: float, seed: int, info: dict, tail_seed: int | None = None,
           pool_size: int | None = None, pool_seed: int = 0) -> Splits:
    """Every loader's last step: the optional long tail, the optional cut of the pool to `pool_size` images, then
    what run.json should say about the data. The floor, the held-out split and the metrics classifier's pool are
    drawn before either, so one ruler scores every tail and every pool size."""
    if exponent and splits.train.labels is None:
        raise UserError(f"dataset.long_tail={exponent} needs class labels, and this dataset has none "
                        "(a folder gets labels from class subfolders); set dataset.long_tail=0")
    splits.floor = floor_split(splits.train, len(splits.heldout), seed)
    splits = long_tail_splits(splits, exponent, seed, tail_seed)
    if pool_size is not None:
        if pool_size > len(splits.train):
            raise UserError(f"dataset.pool_size={pool_size} is larger than the training pool's {len(splits.train)} "
                            "images: null (all of them) or at most that many")
        ruler = splits.ruler_pool if splits.ruler_pool is not None else splits.train
        splits = Splits(nested_take(splits.train, pool_size, pool_seed), splits.heldout, splits.info, splits.floor,
                        ruler_pool=ruler)
    splits.info = {**info, "long_tail": exponent, **({"pool_size": pool_size} if pool_size is not None else {})}
    if exponent:
        splits.info["tail_order"] = tail_order(splits.train.num_classes, tail_seed)  # type: ignore[arg-type]
    if splits.train.labels is not None:
        splits.info["class_counts"] = {"train": class_counts(splits.train), "heldout": class_counts(splits.heldout),
                                       "floor": class_counts(splits.floor) if splits.floor is not None else None}
    return splits
