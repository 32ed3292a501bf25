"""How each generation's training set is built from the real pool and the synthetic sets so far.

All regimes are one function of (real pool, synthetic sets so far, generation, seed):
  replace     the last generation's samples only (the fully synthetic loop)
  accumulate  the real pool plus every synthetic set so far, optionally subsampled to a fixed size
  fresh       a fresh draw of real images each generation plus the last samples, at `real_fraction`
  augment     a fixed real subset (drawn once) plus the last samples, at `real_fraction`
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imgcollapse.data import ImageSet

KINDS = ("replace", "accumulate", "fresh", "augment")


def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *tags]))


@dataclass
class Regime:
    """A regime chosen by config (`regime=replace|accumulate|fresh|augment`)."""

    kind: str = "replace"
    real_fraction: float = 0.0  # fresh/augment: share of real images in each training set
    subsample: int | None = None  # accumulate: draw this many images from everything so far (None: all)

    def training_set(
        self, real: ImageSet, synthetic: list[ImageSet], generation: int, seed: int
    ) -> tuple[ImageSet, dict[str, float]]:
        """The training set of `generation` (≥ 1) and its composition (num_real, num_synthetic, shares)."""
        if generation < 1 or len(synthetic) != generation:
            raise ValueError(f"generation {generation} needs the {generation} synthetic sets before it")
        last = synthetic[-1]
        if self.kind == "replace":
            parts = [("real", real.subset([])), (generation - 1, last)]
        elif self.kind == "accumulate":
            parts = [("real", real)] + list(enumerate(synthetic))
            if self.subsample is not None:
                parts = _subsample(parts, self.subsample, _rng(seed, generation, 1))
        elif self.kind in ("fresh", "augment"):
            size = len(last)
            num_real = min(len(real), round(self.real_fraction * size))
            # augment draws its real subset once (same tags every generation); fresh draws anew each time
            real_rng = _rng(seed, 0, 2) if self.kind == "augment" else _rng(seed, generation, 2)
            real_idx = np.sort(real_rng.choice(len(real), num_real, replace=False))
            syn_idx = np.sort(_rng(seed, generation, 3).choice(len(last), size - num_real, replace=False))
            parts = [("real", real.subset(real_idx)), (generation - 1, last.subset(syn_idx))]
        else:
            raise ValueError(f"regime.kind={self.kind!r} is not one of {KINDS}")
        return _combine(parts, generation)


def _subsample(parts: list[tuple], size: int, rng: np.random.Generator) -> list[tuple]:
    """Draw `size` images uniformly from the union of `parts`, keeping track of where each came from."""
    total = sum(len(s) for _, s in parts)
    if size > total:
        raise ValueError(f"regime.subsample={size} is larger than the {total} images available")
    chosen = np.sort(rng.choice(total, size, replace=False))
    out, offset = [], 0
    for source, s in parts:
        local = chosen[(chosen >= offset) & (chosen < offset + len(s))] - offset
        out.append((source, s.subset(local)))
        offset += len(s)
    return out


def _combine(parts: list[tuple], generation: int) -> tuple[ImageSet, dict[str, float]]:
    nonempty = [s for _, s in parts if len(s)]
    data = ImageSet.concat(nonempty)
    num_real = sum(len(s) for source, s in parts if source == "real")
    composition: dict[str, float] = {"num_real": num_real, "num_synthetic": len(data) - num_real}
    for g in range(generation):
        count = sum(len(s) for source, s in parts if source == g)
        if count:
            composition[f"share_gen_{g:03d}"] = count / len(data)
    return data, composition
