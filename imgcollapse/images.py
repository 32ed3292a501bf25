"""The kit's one in-memory image type, passed between every layer: `ImageSet` (uint8 N×C×H×W images, optional
int64 labels, class names), and the conversions models and feature extractors use."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class ImageSet:
    """A small in-memory image set; models convert to float themselves."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor | None = None  # int64 [N], or None for unlabelled data
    class_names: list[str] | None = None
    # float64 [N, C, H, W] on the [-1, 1] scale, neither clipped nor rounded, where a model keeps its samples exact
    # (model=gmm model.float_samples=true); `images` is then their clipped 8-bit picture, which the metrics score
    values: torch.Tensor | None = None
    # which population member made which images: (member label, start, stop) blocks of `images`, set by
    # Population.sample for the chain to score each member; empty for one model's samples. Not saved, and not
    # kept by subset or concat (their images are no longer those blocks).
    members: list[tuple[str, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"ImageSet needs uint8 N×C×H×W images, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.values is not None and tuple(self.values.shape) != tuple(self.images.shape):
            raise ValueError(f"values of shape {tuple(self.values.shape)} for images of {tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")
        for label, start, stop in self.members:
            if not 0 <= start <= stop <= len(self.images):
                raise ValueError(f"member {label!r}'s block [{start}, {stop}) is not within {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names is not None else None

    def subset(self, index: torch.Tensor | np.ndarray | list[int]) -> ImageSet:
        """The images (and labels) at `index`, in that order."""
        index = torch.as_tensor(index, dtype=torch.long)
        labels = self.labels[index] if self.labels is not None else None
        return ImageSet(self.images[index], labels, self.class_names,
                        self.values[index] if self.values is not None else None)

    def exact(self) -> torch.Tensor:
        """float64 pixels on the [-1, 1] scale: the exact `values` where kept, else the 8-bit images'."""
        return self.values if self.values is not None else to_float(self.images).double()

    def fingerprint(self) -> str:
        """Content hash of images and labels: a cache key that changes whenever the data does."""
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        if self.labels is not None:
            h.update(self.labels.numpy().astype(np.int64).tobytes())
        return h.hexdigest()[:16]

    def save(self, path: Path) -> None:
        """Write to an .npz file (uint8 images, labels if any, class names); the caller makes it atomic."""
        arrays = {"images": self.images.numpy()}
        if self.labels is not None:
            arrays["labels"] = self.labels.numpy()
        if self.class_names is not None:
            arrays["class_names"] = np.array(self.class_names)
        if self.values is not None:
            arrays["values"] = self.values.numpy()
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> ImageSet:
        with np.load(path) as z:
            labels = torch.from_numpy(z["labels"]).long() if "labels" in z else None
            names = [str(n) for n in z["class_names"]] if "class_names" in z else None
            values = torch.from_numpy(z["values"]) if "values" in z else None
            return cls(torch.from_numpy(z["images"]), labels, names, values)

    @classmethod
    def concat(cls, sets: list[ImageSet]) -> ImageSet:
        """Stack sets of the same image shape; labels survive only if every set has them."""
        if not sets:
            raise ValueError("cannot concatenate zero image sets")
        labels = None
        if all(s.labels is not None for s in sets):
            labels = torch.cat([s.labels for s in sets])  # type: ignore[misc]
        values = torch.cat([s.exact() for s in sets]) if any(s.values is not None for s in sets) else None
        return cls(torch.cat([s.images for s in sets]), labels, sets[0].class_names, values)



def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamped and rounded."""
    return x.add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
