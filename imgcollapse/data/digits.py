"""The embedded default: scikit-learn's 1,797 handwritten 8×8 digits, 10 classes, no download."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import MISSING
from sklearn.datasets import load_digits as _sklearn_digits

from imgcollapse.data import DatasetConfig, ImageSet, Splits
from imgcollapse.data.transforms import finish, resize, split, to_channels
from imgcollapse.errors import require

DIGITS = 1797  # images in scikit-learn's digits


@dataclass
class DigitsConfig(DatasetConfig):
    """`dataset=digits` (values and their reasons: conf/dataset/digits.yaml)."""

    _target_: str = "imgcollapse.data.digits.load_digits"
    num_heldout: int = MISSING

    def check(self) -> None:
        super().check()
        require(10 <= self.num_heldout <= DIGITS - 10, "dataset.num_heldout", self.num_heldout,
                f"an integer in [10, {DIGITS - 10}]: each of the 10 classes on both sides of the {DIGITS:,} digits")


def load_digits(config: DigitsConfig) -> Splits:
    """Load the bundled digits (grey levels 0-16 scaled to 0-255), resize, split once, optionally long-tail."""
    bunch = _sklearn_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    images = to_channels(resize(images, config.image_size), config.channels)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    data = ImageSet(images, labels, [str(int(n)) for n in bunch.target_names])
    splits = split(data, config.num_heldout, config.split_seed)
    return finish(splits, config.long_tail, config.split_seed, {"source": "sklearn digits"},
                  tail_seed=config.tail_seed,
                  pool_size=config.pool_size, pool_seed=config.pool_seed)
