"""Image figures: sample grids, the collapse strip and the GIF, upscaled with nearest-neighbour to stay crisp.

Every figure is a pure function of the images it is given, and PNGs carry no timestamp or software tag,
so rebuilding a report from the same files gives byte-identical pictures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from imgcollapse.store import atomic_write

CELL_PIXELS = 48  # target on-screen size of one image: 8x8 digits are upscaled 6x
PADDING = 2  # pixels between cells (torchvision's make_grid padding)
TITLE_BAR = 16  # pixels of the title bar above a grid or strip
LABEL_WIDTH = 64  # pixels of the generation labels left of the strip
MISSING_GREY = 128  # fill of a strip row whose generation has no strip.npz
FRAME_MS = 600  # GIF frame duration; the last frame is held three times as long


def upscale_factor(size: int) -> int:
    """Integer nearest-neighbour factor that brings a `size`-pixel image to about CELL_PIXELS."""
    return max(1, math.ceil(CELL_PIXELS / size))


def _upscaled_grid(images: torch.Tensor, nrow: int) -> Image.Image:
    factor = upscale_factor(images.shape[-1])
    big = images.repeat_interleave(factor, dim=-1).repeat_interleave(factor, dim=-2)
    grid = make_grid(big, nrow=nrow, padding=PADDING, pad_value=255)
    return Image.fromarray(grid.permute(1, 2, 0).numpy()).convert("RGB")


def grid_image(images: torch.Tensor, nrow: int | None = None, title: str | None = None) -> Image.Image:
    """A PIL grid of uint8 N×C×H×W images, each upscaled, with an optional title bar."""
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    picture = _upscaled_grid(images, nrow)
    if title is None:
        return picture
    out = Image.new("RGB", (picture.width, picture.height + TITLE_BAR), "white")
    out.paste(picture, (0, TITLE_BAR))
    ImageDraw.Draw(out).text((4, 2), title, fill="black")
    return out


def strip_image(rows: Sequence[tuple[int, torch.Tensor | None]], title: str | None = None) -> Image.Image:
    """The collapse strip: one row per (generation, its strip images), columns = the fixed noise seeds.

    A row whose images are None (the generation's strip.npz is missing) is drawn grey and labelled so.
    Size: LABEL_WIDTH + seeds·(cell + PADDING) + PADDING wide, TITLE_BAR + rows·(cell + PADDING) + PADDING high.
    """
    present = [images for _, images in rows if images is not None]
    if not present:
        raise ValueError("a collapse strip needs at least one generation with strip images")
    template = torch.full_like(present[0], MISSING_GREY)
    stacked = torch.cat([images if images is not None else template for _, images in rows])
    picture = _upscaled_grid(stacked, nrow=len(template))
    out = Image.new("RGB", (LABEL_WIDTH + picture.width, TITLE_BAR + picture.height), "white")
    out.paste(picture, (LABEL_WIDTH, TITLE_BAR))
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((4, 2), title, fill="black")
    row_height = (picture.height - PADDING) / len(rows)
    for i, (generation, images) in enumerate(rows):
        y = TITLE_BAR + PADDING + int(i * row_height + row_height / 2) - 12
        draw.text((4, y), f"gen {generation}", fill="black")
        if images is None:
            draw.text((4, y + 12), "missing", fill="red")
    return out


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically (PIL adds no timestamp, so the bytes depend only on the pixels)."""
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_gif(frames: Sequence[Image.Image], path: Path, frame_ms: int = FRAME_MS) -> None:
    """An endlessly looping GIF of `frames` (padded white to a common size), written atomically."""
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    width, height = max(f.width for f in frames), max(f.height for f in frames)
    canvas = []
    for frame in frames:
        padded = Image.new("RGB", (width, height), "white")
        padded.paste(frame.convert("RGB"), (0, 0))
        canvas.append(padded)
    durations = [frame_ms] * (len(canvas) - 1) + [3 * frame_ms]
    atomic_write(path, lambda tmp: canvas[0].save(tmp, format="GIF", save_all=True, append_images=canvas[1:],
                                                  duration=durations, loop=0))
