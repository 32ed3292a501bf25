"""Generative models. Each is a small class the chain drives through four methods and one attribute:

    fit(data: ImageSet, seed: int) -> dict[str, float]       train from scratch on `data` (has "train_loss")
    sample(n: int, seed: int, labels=None) -> ImageSet        deterministic for a given seed
    save(path: Path) -> None                                  a self-contained directory
    load(path: Path, accelerator=None) -> Model  (classmethod)
    num_classes: int | None                                   set: conditional, `sample` needs `labels`

Models are built by `hydra.utils.instantiate(cfg.model, image_shape=..., accelerator=...)`:
`ddpm` (diffusers), `vae` (a small conv VAE), `gmm` (scikit-learn's GaussianMixture). All take 1- or
3-channel images; vae and gmm any height and width, ddpm sizes its UNet's downsampling divides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from imgcollapse.data import ImageSet


class Model(Protocol):
    num_classes: int | None  # class-conditional models sample from labels; None: unconditional

    def fit(self, data: ImageSet, seed: int) -> dict[str, float]: ...

    def sample(self, n: int, seed: int, labels: torch.Tensor | None = None) -> ImageSet: ...

    def save(self, path: Path) -> None: ...


def noise(shape: tuple[int, ...], seed: int, start: int, stop: int, chunk: int = 256) -> torch.Tensor:
    """Standard normal noise for items [start, stop) of an endless seeded stream.

    Item i's noise depends only on (seed, i), never on the batch size, so the same seed gives the
    same starting point for every sample count: the collapse strip relies on it.
    """
    parts = []
    for c in range(start // chunk, (stop - 1) // chunk + 1):
        g = torch.Generator().manual_seed(seed * 1_000_003 + c)
        block = torch.randn((chunk, *shape), generator=g)
        lo, hi = max(start, c * chunk) - c * chunk, min(stop, (c + 1) * chunk) - c * chunk
        parts.append(block[lo:hi])
    return torch.cat(parts)
