"""A watermark for generated images (`regime=contaminated regime.filter=watermark`): the provider adds a secret ±1
pattern, `strength` grey levels deep, to every image it publishes, and a filter finds it again by correlation before
training, with its threshold set for a target false-positive rate on real images.

This is the classic additive spread-spectrum mark (Cox et al. 1997), written here because no library the kit uses
has one for 8-bit tensors. The key is drawn in blocks of `block` x `block` pixels: a block-constant pattern is
low-frequency, so it survives the downscaling a pixel-level one does not. Detection is blind (the unmarked image is
unknown): the Pearson correlation of the image with the key, whose null spread on real images is the host
interference the threshold must clear. `robustness` measures what survives what happens to an image between
generations: no 8-bit rounding, resizing to half size and back, and the dataset's own loading transforms.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from imgcollapse.data.transforms import resize, to_channels
from imgcollapse.detector import calibrated


def key(shape: tuple[int, ...], seed: int, block: int) -> torch.Tensor:
    """The secret pattern: C x H x W signs ±1, constant on `block` x `block` tiles, drawn by `seed`."""
    c, h, w = shape
    g = torch.Generator().manual_seed(int(seed))
    coarse = torch.randint(0, 2, (c, math.ceil(h / block), math.ceil(w / block)), generator=g).float() * 2 - 1
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :h, :w].contiguous()


def embed(images: torch.Tensor, pattern: torch.Tensor, strength: float, rounded: bool = True) -> torch.Tensor:
    """uint8 images with the pattern added `strength` grey levels deep (clipped to 0..255; `rounded`: back to uint8,
    as any image stored is; else float, the mark before rounding)."""
    x = (images.float() + strength * pattern).clamp(0, 255)
    return x.round().to(torch.uint8) if rounded else x


def scores(images: torch.Tensor, pattern: torch.Tensor) -> np.ndarray:
    """Each image's Pearson correlation with the pattern, in [-1, 1] (a flat image: 0)."""
    x = images.double().flatten(1)
    k = pattern.double().flatten()
    x = x - x.mean(1, keepdim=True)
    k = k - k.mean()
    norm = x.norm(dim=1) * k.norm()
    return torch.where(norm > 0, (x @ k) / norm.clamp_min(1e-12), torch.zeros_like(norm)).numpy()


def calibrate(real: torch.Tensor, pattern: torch.Tensor, fpr: float) -> tuple[float, float]:
    """(threshold, the share of `real` it flags): the least threshold that flags at most `fpr` of these real
    images (flagged: score > threshold)."""
    return calibrated(scores(real, pattern), fpr)


def _half_and_back(images: torch.Tensor) -> torch.Tensor:
    size = images.shape[-1]
    return resize(resize(images, max(1, size // 2)), size)


def _reloaded(images: torch.Tensor) -> torch.Tensor:
    """What a dataset's loader does to an image published at another size and in colour: resized to 4x, 3 channels,
    then back through the kit's own transforms (transforms.resize, to_channels) to the dataset's size and channels."""
    size, channels = images.shape[-1], images.shape[1]
    big = to_channels(resize(images, 4 * size), 3)
    return to_channels(resize(big, size), channels)


PERTURBATIONS = {  # what happens to a published image before the filter sees it (robustness's columns)
    "float": None,  # the mark before 8-bit rounding: what rounding costs it
    "resized": _half_and_back,  # downscaled to half size (antialiased) and back
    "reloaded": _reloaded,  # published at 4x in colour, loaded back through the dataset's transforms
}


def robustness(clean: torch.Tensor, pattern: torch.Tensor, strength: float, threshold: float) -> dict[str, float]:
    """The share of `clean` (unmarked uint8 images) found after marking and each perturbation, at `threshold`:
    watermark_tpr_float (before rounding), watermark_tpr_resized, watermark_tpr_reloaded; and watermark_psnr, the
    mark's cost to the images in dB."""
    out = {}
    marked = embed(clean, pattern, strength)
    for name, perturb in PERTURBATIONS.items():
        seen = embed(clean, pattern, strength, rounded=False) if perturb is None else perturb(marked)
        out[f"watermark_tpr_{name}"] = float((scores(seen, pattern) > threshold).mean())
    mse = F.mse_loss(marked.float(), clean.float()).item()
    out["watermark_psnr"] = 10 * math.log10(255.0**2 / mse) if mse > 0 else math.inf
    return out
