"""Image figures: sample grids and the collapse strip, upscaled with nearest-neighbour to stay crisp."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from imgcollapse.store import atomic_write

CELL_PIXELS = 48  # target on-screen size of one image: 8x8 digits are upscaled 6x


def upscale_factor(size: int) -> int:
    """Integer nearest-neighbour factor that brings a `size`-pixel image to about CELL_PIXELS."""
    return max(1, math.ceil(CELL_PIXELS / size))


def grid_image(images: torch.Tensor, nrow: int | None = None, title: str | None = None) -> Image.Image:
    """A PIL grid of uint8 N×C×H×W images, each upscaled, with an optional title bar."""
    factor = upscale_factor(images.shape[-1])
    big = images.repeat_interleave(factor, dim=-1).repeat_interleave(factor, dim=-2)
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    grid = make_grid(big, nrow=nrow, padding=2, pad_value=255)
    picture = Image.fromarray(grid.permute(1, 2, 0).numpy()).convert("RGB")
    if title is None:
        return picture
    bar = 16
    out = Image.new("RGB", (picture.width, picture.height + bar), "white")
    out.paste(picture, (0, bar))
    ImageDraw.Draw(out).text((4, 2), title, fill="black")
    return out


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically."""
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
