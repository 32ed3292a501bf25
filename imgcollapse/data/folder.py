"""Any folder of images: every PNG, JPEG, WebP, BMP or GIF (first frame) under it, recursively.

First-level subfolders are classes (`faces/smiling/a.png` has class `smiling`); a folder without
subfolders is unlabelled. Each image is converted to 1 or 3 channels, resized (shorter side) and
center-cropped to a square. The decoded uint8 images are cached once under `cache_dir`, keyed by the
folder's path, file list, sizes and modification times and the transform, so a chain of many
generations (or a rerun) decodes the folder once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from omegaconf import MISSING
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from imgcollapse.data import DatasetConfig, ImageSet, Splits
from imgcollapse.data.transforms import finish, split
from imgcollapse.errors import UserError, require
from imgcollapse.store import atomic_write

log = logging.getLogger(__name__)

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
FOLDER_VERSION = 1  # bump when decoding changes: invalidates cached folders
SHOW_BAD = 5  # bad files named in an error message; the rest are counted
# What Pillow raises for unreadable, truncated or hostile files (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def list_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively, relative to it, sorted; hidden files and folders skipped."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.suffix.lower() in SUFFIXES and not any(p.startswith(".") for p in rel.parts) and path.is_file():
            found.append(rel)
    return sorted(found)


def class_names_of(files: list[Path], root: Path) -> list[str] | None:
    """Sorted first-level subfolder names when images sit in subfolders; None when none do."""
    loose = [f for f in files if len(f.parts) == 1]
    if len(loose) == len(files):
        return None
    if loose:
        raise UserError(f"dataset.path={root} mixes class subfolders with {len(loose)} images directly in it "
                        f"({', '.join(str(f) for f in loose[:SHOW_BAD])}{', ...' if len(loose) > SHOW_BAD else ''})"
                        ": put every image in a class subfolder, or none of them")
    return sorted({f.parts[0] for f in files})


def decode(path: Path, image_size: int, channels: int) -> torch.Tensor:
    """One image file as uint8 C×S×S: first frame, upright, converted, shorter side resized, center-cropped."""
    with Image.open(path) as im:
        im.seek(0)  # the first frame of an animated GIF or WebP
        im = ImageOps.exif_transpose(im)  # camera JPEGs store rotation in EXIF
        im = im.convert("L" if channels == 1 else "RGB")  # forces a full decode: truncation raises here
    im = TF.center_crop(TF.resize(im, image_size, antialias=True), [image_size, image_size])
    return TF.pil_to_tensor(im)


def fingerprint(root: Path, files: list[Path], image_size: int, channels: int) -> str:
    """Cache key: the folder, every file's name, size and modification time, and the transform."""
    stats = []
    for f in files:
        st = (root / f).stat()
        stats.append((str(f), st.st_size, st.st_mtime_ns))
    key = {"root": str(root), "files": stats, "image_size": image_size, "channels": channels,
           "version": FOLDER_VERSION}
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def decode_all(root: Path, files: list[Path], image_size: int, channels: int) -> tuple[torch.Tensor, dict]:
    """Decode every file; returns the images of the readable ones (in file order) and {bad file: reason}."""
    images, bad = [], {}
    for f in tqdm(files, desc=f"decode {root.name}", disable=None, leave=False):
        try:
            images.append(decode(root / f, image_size, channels))
        except DECODE_ERRORS as e:
            bad[str(f)] = f"{type(e).__name__}: {e}"
    empty = torch.empty((0, channels, image_size, image_size), dtype=torch.uint8)
    return (torch.stack(images) if images else empty), bad


def _save_cache(path: Path, images: torch.Tensor, good: list[str], bad: dict) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, images=images.numpy(), files=np.array(good, dtype=str),
                     bad_files=np.array(list(bad), dtype=str), bad_reasons=np.array(list(bad.values()), dtype=str))

    atomic_write(path, write)


def _load_cache(path: Path) -> tuple[torch.Tensor, list[str], dict]:
    with np.load(path) as z:
        return (torch.from_numpy(z["images"]), [str(f) for f in z["files"]],
                dict(zip((str(f) for f in z["bad_files"]), (str(r) for r in z["bad_reasons"]), strict=True)))


def read_folder(root: Path, image_size: int, channels: int, cache_dir: Path | None) -> tuple[ImageSet, dict]:
    """The folder's readable images (labelled when it has class subfolders) and {bad file: reason}; cached."""
    files = list_images(root)
    if not files:
        raise UserError(f"dataset.path={root} holds no image files ({', '.join(SUFFIXES)}), searched recursively")
    names = class_names_of(files, root)
    cache = None
    if cache_dir is not None:
        cache = cache_dir / "folder" / f"{root.name}-{fingerprint(root, files, image_size, channels)}.npz"
    cached = None
    if cache is not None and cache.exists():
        try:
            cached = _load_cache(cache)
            log.info("dataset.path=%s: %d images from the cache %s", root, len(cached[0]), cache)
        except Exception as e:  # truncated or corrupt: a cache is rebuilt, never trusted
            log.warning("the decoded-folder cache %s cannot be read (%s: %s); decoding the folder again", cache,
                        type(e).__name__, e)
            cache.unlink(missing_ok=True)
    if cached is not None:
        images, good, bad = cached
    else:
        images, bad = decode_all(root, files, image_size, channels)
        good = [str(f) for f in files if str(f) not in bad]
        if cache is not None:
            _save_cache(cache, images, good, bad)
            log.info("dataset.path=%s: decoded %d images, cached at %s", root, len(images), cache)
    labels = None
    if names is not None:
        present = sorted({Path(f).parts[0] for f in good})  # a class whose every file is bad is no class
        labels = torch.tensor([present.index(Path(f).parts[0]) for f in good], dtype=torch.long)
        names = present
    return ImageSet(images, labels, names), bad


def _bad_files_message(root: Path, bad: dict, total: int) -> str:
    shown = "; ".join(f"{f} ({reason})" for f, reason in list(bad.items())[:SHOW_BAD])
    more = f"; and {len(bad) - SHOW_BAD} more" if len(bad) > SHOW_BAD else ""
    return (f"{len(bad)} of {total} image files under dataset.path={root} cannot be read: {shown}{more}. "
            "Fix or remove them, or set dataset.skip_bad=true to leave them out (run.json records how many)")


@dataclass
class FolderConfig(DatasetConfig):
    """`dataset=folder` (values and their reasons: conf/dataset/folder.yaml)."""

    _target_: str = "imgcollapse.data.folder.load_folder"
    path: str | None = MISSING
    heldout_fraction: float = MISSING
    skip_bad: bool = MISSING
    cache_dir: str | None = MISSING

    def check(self) -> None:
        super().check()
        require(self.path is not None and self.path != "", "dataset.path", self.path,
                "a folder of images: dataset.path=DIR")
        require(0 < self.heldout_fraction < 1, "dataset.heldout_fraction", self.heldout_fraction,
                "a fraction in (0, 1): the share of the folder's images held out for scoring")


def load_folder(config: FolderConfig) -> Splits:
    """Load a folder of images, split it once by a fixed seed into training pool and held-out split."""
    path, image_size, channels = config.path, config.image_size, config.channels
    heldout_fraction, split_seed, cache_dir = config.heldout_fraction, config.split_seed, config.cache_dir
    config.check()  # the same checks as config.validate, for a caller that skipped it
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"dataset.path={root} is not a folder")
    data, bad = read_folder(root, image_size, channels, Path(cache_dir).expanduser() if cache_dir else None)
    if bad and not config.skip_bad:
        raise UserError(_bad_files_message(root, bad, len(data) + len(bad)))
    if bad:
        log.warning("dataset.skip_bad=true: left out %d unreadable files under %s", len(bad), root)
    if len(data) < 2:
        raise UserError(f"dataset.path={root} has {len(data)} readable image(s): a chain needs at least 2 "
                        "(one to train on, one held out), and many more to mean anything")
    # at least one held-out image per class, so every class can be scored
    num_heldout = min(len(data) - 1, max(data.num_classes or 1, round(heldout_fraction * len(data))))
    try:
        splits = split(data, num_heldout, split_seed)
    except ValueError as e:  # stratification needs ≥ 2 images per class and a place for each class on both sides
        counts = dict(zip(data.class_names or [], torch.bincount(data.labels).tolist(), strict=True)) \
            if data.labels is not None else {}
        raise UserError(f"dataset.path={root}: cannot split {len(data)} images into {num_heldout} held out "
                        f"(dataset.heldout_fraction={heldout_fraction}) with every class on both sides: {e}. "
                        f"Images per class: {counts}") from e
    info = {"source": "folder", "path": str(root), "num_files": len(data) + len(bad), "skipped_files": len(bad),
            "skipped_examples": list(bad)[:SHOW_BAD]}
    return finish(splits, config.long_tail, split_seed, info, tail_seed=config.tail_seed, pool_size=config.pool_size,
                  pool_seed=config.pool_seed)
