"""A detector of generated images, for a pool where real and generated images mix without labels
(`regime=contaminated regime.filter=detector`): a binary classifier trained each generation on real images against
earlier generations' samples, its threshold set for a target false-positive rate on real images it never trained on.

It is its own network and seed, never the metrics' classifier (the ruler): the verifier's LeNet recipe
(verifier.fit_lenet) with two outputs, seeded by `regime.detector_seed`. Its real images are one half of the floor
split (real images the ruler never trains on); the other half sets the threshold. Its generated images are a fixed
half of each earlier generation's published samples; the other half is what `tpr_unseen` is measured on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from imgcollapse.data import ImageSet, to_float
from imgcollapse.verifier import VerifierNet, fit_lenet


@dataclass
class Detector:
    """A trained detector: P(generated) of uint8 images, and the threshold above which it flags one."""

    net: VerifierNet
    threshold: float
    calibration_fpr: float  # the share of the threshold-setting real images it flags (at most the target)

    @torch.inference_mode()
    def scores(self, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """P(generated) of each uint8 image."""
        self.net.eval()
        out = [F.softmax(self.net(to_float(images[i : i + batch_size])), dim=1)[:, 1].double().numpy()
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros(0)

    def flags(self, images: torch.Tensor) -> np.ndarray:
        """Which images it calls generated (score above the threshold)."""
        return self.scores(images) > self.threshold


def threshold_for(real_scores: np.ndarray, fpr: float) -> float:
    """The least threshold that flags at most `fpr` of these real images' scores (flagged: score > threshold)."""
    if not len(real_scores):
        raise ValueError("a detector's threshold needs real images to set it on")
    ordered = np.sort(real_scores)
    allowed = int(np.floor(fpr * len(ordered)))  # real images it may flag
    return float(ordered[len(ordered) - allowed - 1])


def calibrated(real_scores: np.ndarray, fpr: float) -> tuple[float, float]:
    """(threshold_for(real_scores, fpr), the share of those real scores it flags): a filter's threshold and the
    false-positive rate it has on the real images that set it (the detector's and the watermark's)."""
    threshold = threshold_for(real_scores, fpr)
    return threshold, float((real_scores > threshold).mean())


def train_detector(real: ImageSet, generated: ImageSet, calibration: ImageSet, *, fpr: float, epochs: int,
                   seed: int) -> Detector:
    """Train on `real` (label 0) against `generated` (label 1, subsampled to the real count so the classes balance)
    and set the threshold so that at most `fpr` of `calibration` (real images it did not train on) is flagged."""
    if not len(real) or not len(generated):
        raise ValueError(f"a detector needs real and generated images to train on: {len(real)} and {len(generated)}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 8]))
    if len(generated) > len(real):
        generated = generated.subset(np.sort(rng.choice(len(generated), len(real), replace=False)))
    x = to_float(torch.cat([real.images, generated.images]))
    y = torch.cat([torch.zeros(len(real), dtype=torch.long), torch.ones(len(generated), dtype=torch.long)])
    detector = Detector(fit_lenet(x, y, 2, epochs=epochs, seed=seed), float("nan"), float("nan"))
    calibration_scores = detector.scores(calibration.images)
    detector.threshold, detector.calibration_fpr = calibrated(calibration_scores, fpr)
    return detector
