"""How each generation's training set is built from the real pool and the synthetic sets so far.

All regimes are one function of (real pool, synthetic sets so far, generation, seed):
  replace     the last generation's samples only (the fully synthetic loop)
  accumulate  the real pool plus every synthetic set so far, optionally subsampled to a fixed size
  fresh       a fresh draw of real images each generation plus the last samples, at `real_fraction`
  augment     a fixed real subset (drawn once) plus the last samples, at `real_fraction`

Randomness comes from (seed, generation, purpose) only, where `seed` is the chain's seed: a resumed chain
builds the same sets, and augment's real subset is the same in every generation.

Curation (any regime, Feng et al. 2024): the model makes `num_candidates(n)` samples, a verifier scores
them, and `curate` keeps the `n` it scores highest; those are what later generations train on.
  none        keep every sample (no extra candidates)
  confidence  the metrics classifier's probability of its predicted class: keep what it finds unambiguous
  condition   the classifier's probability of the sample's own label, i.e. the class a conditional model
              was asked for: keep samples that show what they were meant to (for unconditional models,
              whose labels are the classifier's predictions, this equals `confidence`)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from imgcollapse.data import ImageSet

KINDS = ("replace", "accumulate", "fresh", "augment")
CURATIONS = ("none", "confidence", "condition")


def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *tags]))


@dataclass
class Regime:
    """A regime chosen by config (`regime=replace|accumulate|fresh|augment`)."""

    kind: str = "replace"
    real_fraction: float = 0.0  # fresh/augment: share of real images in each training set
    subsample: int | None = None  # accumulate: draw this many images from everything so far (None: all)
    curation: str = "none"  # verifier that filters synthetic samples (CURATIONS)
    keep_fraction: float = 1.0  # curation: share of the candidates kept

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
            if self.kind == "augment":  # one permutation for the whole chain: the same real subset every time
                real_idx = _rng(seed, 0, 2).permutation(len(real))[:num_real]
            else:  # a new draw every generation
                real_idx = _rng(seed, generation, 2).choice(len(real), num_real, replace=False)
            syn_idx = _rng(seed, generation, 3).choice(len(last), size - num_real, replace=False)
            parts = [("real", real.subset(np.sort(real_idx))), (generation - 1, last.subset(np.sort(syn_idx)))]
        else:
            raise ValueError(f"regime.kind={self.kind!r} is not one of {KINDS}")
        return _combine(parts, generation, by_source=self.kind == "accumulate")

    # Curation -----------------------------------------------------------------------------------
    def num_candidates(self, num_synthetic: int) -> int:
        """How many samples the model makes so that curation can keep `num_synthetic` of them."""
        return num_synthetic if self.curation == "none" else math.ceil(num_synthetic / self.keep_fraction)

    def curate(self, candidates: ImageSet, probs: np.ndarray | None, n: int) -> tuple[ImageSet, dict[str, float]]:
        """The `n` candidates the verifier scores highest (in their original order) and curation stats."""
        if self.curation == "none":
            return candidates.subset(np.arange(n)), {}
        if probs is None:
            raise ValueError("curation needs the metrics classifier's class probabilities")
        scores = verifier_scores(self.curation, probs, candidates.labels)
        keep = np.sort(np.argsort(-scores, kind="stable")[:n])
        stats = {"num_candidates": len(candidates), "curation_threshold": float(scores[keep].min()),
                 "curated_score": float(scores[keep].mean()), "candidate_score": float(scores.mean())}
        return candidates.subset(keep), stats


def verifier_scores(curation: str, probs: np.ndarray, labels: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """Per-sample verifier score in [0, 1] from the metrics classifier's class probabilities [N, K]."""
    if curation == "confidence" or (curation == "condition" and labels is None):
        return probs.max(axis=1)
    if curation == "condition":
        return probs[np.arange(len(probs)), np.asarray(labels)]
    raise ValueError(f"regime.curation={curation!r} is not one of {CURATIONS}")


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


def _combine(parts: list[tuple], generation: int, by_source: bool) -> tuple[ImageSet, dict[str, float]]:
    """One training set from (source, images) parts, and its composition; `by_source` adds the share each
    earlier generation holds (only accumulate mixes several: elsewhere all synthetic data is the last one's)."""
    nonempty = [s for _, s in parts if len(s)]
    data = ImageSet.concat(nonempty)
    num_real = sum(len(s) for source, s in parts if source == "real")
    composition: dict[str, float] = {"num_real": num_real, "num_synthetic": len(data) - num_real}
    for g in range(generation if by_source else 0):
        count = sum(len(s) for source, s in parts if source == g)
        if count:
            composition[f"share_gen_{g:03d}"] = count / len(data)
    return data, composition
