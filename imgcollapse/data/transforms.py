"""Resizing, channel conversion and the one-time train/held-out split."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from imgcollapse.data import ImageSet, Splits


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
