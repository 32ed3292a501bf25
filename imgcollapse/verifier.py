"""An independent verifier for curation (Feng et al. 2024, "verification"): a classifier with an architecture, seed,
cache and training images of its own, never used by the metrics.

The metrics classifier (metrics/features.py: three 3x3 convolutions, a 128-d feature layer; the "ruler") judges
every generation; if curation used it too, the chain would select what its own ruler likes. The verifier is a
different network (two 5x5 convolutions with max-pooling, dropout, one hidden layer: a LeNet) and is cross-fitted:
it trains on the floor split (`Splits.floor`: real images drawn from the pool before any long tail, class-stratified,
the held-out split's size), which the ruler never trains on (it learns from the pool less the floor), so the two
judges share no training image. It trains with `regime.verifier_seed` (by default the chain's seed: each chain seed
its own verifier, so a study's intervals include its randomness) and is cached under `<cache_dir>/verifier/`.
It answers one question per sample: which class is this, and how sure are you. On the digits' 400-image floor it
reaches a held-out accuracy of about 0.95 (0.985 when it trained on the whole pool, shared with the ruler).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from imgcollapse.data import ImageSet, to_float
from imgcollapse.data.transforms import floor_of
from imgcollapse.store import atomic_write

log = logging.getLogger(__name__)

# bump when the architecture or recipe changes: invalidates cached verifiers. 2: trained on the floor split, not
# the pool the ruler learns from
VERIFIER_VERSION = 2


class VerifierNet(nn.Module):
    """LeNet-style: 5x5 convolutions with max-pooling, dropout, a 64-unit hidden layer (not the metrics' network)."""

    def __init__(self, channels: int, num_classes: int, size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 5, padding=2), nn.Tanh(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(16, 32, 5, padding=2), nn.Tanh(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
        )
        side = math.ceil(math.ceil(size / 2) / 2)  # two ceil-mode halvings
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(32 * side * side, 64), nn.Tanh(),
                                  nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Verifier:
    """A trained verifier: class probabilities of uint8 images, its held-out accuracy and cache fingerprint."""

    name = "verifier"

    def __init__(self, net: VerifierNet, accuracy: float, fingerprint: str) -> None:
        self.net, self.accuracy, self.fingerprint = net, accuracy, fingerprint

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Class probabilities [N, K] of uint8 images."""
        self.net.eval()
        out = [F.softmax(self.net(to_float(images[i : i + batch_size])), dim=1).double().numpy()
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.net.head[-1].out_features))


def training_images(pool: ImageSet, heldout: ImageSet, floor: ImageSet | None) -> ImageSet:
    """The verifier's training images: the floor split, real images the metrics classifier never trains on (None:
    drawn from the pool as the metrics draw it then, metrics/evaluation.setup_metrics)."""
    return floor_of(pool, heldout, floor)


def verifier_fingerprint(train: ImageSet, epochs: int, seed: int) -> str:
    """Cache key: its training images' content, the recipe and the architecture version."""
    key = {"kind": "verifier", "data": train.fingerprint(), "epochs": epochs, "seed": seed,
           "version": VERIFIER_VERSION, "shape": list(train.shape), "classes": train.num_classes}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def fit_lenet(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, epochs: int, seed: int, batch_size: int = 32,
              lr: float = 2e-3) -> VerifierNet:
    """A VerifierNet trained from scratch on float images `x` and class ids `y`: SGD with momentum (not the metrics'
    Adam recipe), seeded by `seed` alone. The verifier's recipe, and the contamination detector's (detector.py)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VerifierNet(x.shape[1], num_classes, x.shape[2])
        optimizer = torch.optim.SGD(net.parameters(), lr=lr * 10, momentum=0.9)
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g)
            net.train()
            for start in range(0, len(x) - batch_size + 1, batch_size):
                idx = order[start : start + batch_size]
                loss = F.cross_entropy(net(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return net.eval()


def train_verifier(train: ImageSet, heldout: ImageSet, *, epochs: int, seed: int, batch_size: int = 32,
                   lr: float = 2e-3) -> Verifier:
    """Train the verifier on `train` (real images with labels: the floor split); report its held-out accuracy."""
    if train.labels is None or train.num_classes is None:
        raise ValueError("the verifier needs a labelled dataset")
    net = fit_lenet(to_float(train.images), train.labels, train.num_classes, epochs=epochs, seed=seed,
                    batch_size=batch_size, lr=lr)
    verifier = Verifier(net, float("nan"), "")
    if heldout.labels is not None and len(heldout):
        verifier.accuracy = float((verifier(heldout.images).argmax(1) == heldout.labels.numpy()).mean())
    return verifier


def load_or_train_verifier(train: ImageSet, heldout: ImageSet, cache_dir: Path, *, epochs: int, seed: int) -> Verifier:
    """The cached verifier for these training images and recipe (`<cache_dir>/verifier/`), trained and cached if
    absent or damaged."""
    fingerprint = verifier_fingerprint(train, epochs, seed)
    path = Path(cache_dir) / "verifier" / f"{fingerprint}.pt"
    if path.exists():
        try:
            state = torch.load(path, weights_only=True)
            net = VerifierNet(train.shape[0], train.num_classes, train.shape[1])  # type: ignore[arg-type]
            net.load_state_dict(state["state_dict"])
            return Verifier(net, float(state["accuracy"]), fingerprint)
        except Exception as e:  # a cache is rebuilt, never trusted or fatal when damaged
            log.warning("the verifier cache %s cannot be read (%s: %s): training it again", path, type(e).__name__, e)
            path.unlink(missing_ok=True)
    log.info("training the curation verifier on %d real images the metrics classifier never trains on (cached at %s)",
             len(train), path)
    verifier = train_verifier(train, heldout, epochs=epochs, seed=seed)
    verifier.fingerprint = fingerprint
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"state_dict": verifier.net.state_dict(),
                                               "accuracy": verifier.accuracy}, tmp))
    log.info("curation verifier: held-out accuracy %.3f", verifier.accuracy)
    return verifier
