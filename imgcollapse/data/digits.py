"""The embedded default: scikit-learn's 1,797 handwritten 8×8 digits, 10 classes, no download."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits as _sklearn_digits

from imgcollapse.data import ImageSet, Splits
from imgcollapse.data.transforms import finish, resize, split, to_channels

DIGITS = 1797  # images in scikit-learn's digits


def load_digits(
    image_size: int = 8, channels: int = 1, num_heldout: int = 400, split_seed: int = 0, long_tail: float = 0.0
) -> Splits:
    """Load the bundled digits (grey levels 0-16 scaled to 0-255), resize, split once, optionally long-tail."""
    bunch = _sklearn_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    images = to_channels(resize(images, image_size), channels)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    data = ImageSet(images, labels, [str(int(n)) for n in bunch.target_names])
    return finish(split(data, num_heldout, split_seed), long_tail, split_seed, {"source": "sklearn digits"})
