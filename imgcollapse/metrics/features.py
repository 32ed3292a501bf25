"""Feature extractors. `classifier`: a small CNN trained once per dataset on the real training pool and
cached; its penultimate layer gives features and its softmax gives class predictions in one pass."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from imgcollapse.data import ImageSet, to_float
from imgcollapse.store import atomic_write

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = 1  # bump when the architecture or training recipe changes: invalidates caches


class ClassifierNet(nn.Module):
    """Three 3×3 convolutions, global 2×2 pooling, a 128-d penultimate layer, a linear head."""

    def __init__(self, channels: int, num_classes: int, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


@dataclass
class Classifier:
    """A trained domain classifier and what it was trained on."""

    net: ClassifierNet
    accuracy: float  # on the held-out split
    fingerprint: str

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Features [N, 128] and class probabilities [N, K] of uint8 images, in batches."""
        self.net.eval()
        feats, probs = [], []
        for start in range(0, len(images), batch_size):
            f, logits = self.net(to_float(images[start : start + batch_size]))
            feats.append(f.double().numpy())
            probs.append(F.softmax(logits, dim=1).double().numpy())
        return np.concatenate(feats), np.concatenate(probs)


def _shift(x: torch.Tensor, g: torch.Generator, pad: int = 1) -> torch.Tensor:
    """Random translation by up to `pad` pixels: the classifier should not care where a digit sits."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
    return padded[..., dy : dy + h, dx : dx + w]


def train_classifier(
    train: ImageSet, heldout: ImageSet, *, epochs: int = 30, batch_size: int = 64, lr: float = 1e-3, seed: int = 0
) -> Classifier:
    """Train the domain classifier on the real training pool; report its held-out accuracy."""
    if train.labels is None or train.num_classes is None:
        raise ValueError("the domain classifier needs a labelled dataset")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ClassifierNet(train.shape[0], train.num_classes)
    x, y = to_float(train.images), train.labels
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = max(1, len(x) // batch_size)
    for _ in tqdm(range(epochs), desc="train classifier", disable=None, leave=False):
        order = torch.randperm(len(x), generator=g)
        net.train()
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss = F.cross_entropy(net(_shift(x[idx], g))[1], y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    classifier = Classifier(net, accuracy=float("nan"), fingerprint="")
    _, probs = classifier(heldout.images)
    if heldout.labels is not None:
        classifier.accuracy = float((probs.argmax(1) == heldout.labels.numpy()).mean())
    return classifier


def classifier_fingerprint(train: ImageSet, epochs: int, batch_size: int, lr: float, seed: int) -> str:
    """Cache key: the training data's content, the recipe and the architecture version."""
    key = {"data": train.fingerprint(), "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
           "version": CLASSIFIER_VERSION, "shape": list(train.shape), "classes": train.num_classes}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_or_train_classifier(
    train: ImageSet, heldout: ImageSet, cache_dir: Path, *, epochs: int = 30, batch_size: int = 64,
    lr: float = 1e-3, seed: int = 0,
) -> Classifier:
    """The cached classifier for this training pool and recipe, training (and caching) it if absent."""
    fingerprint = classifier_fingerprint(train, epochs, batch_size, lr, seed)
    path = Path(cache_dir) / "classifier" / f"{fingerprint}.pt"
    if path.exists():
        state = torch.load(path, weights_only=True)
        net = ClassifierNet(train.shape[0], train.num_classes)  # type: ignore[arg-type]
        net.load_state_dict(state["state_dict"])
        return Classifier(net, state["accuracy"], fingerprint)
    log.info("training the metrics classifier (once per dataset; cached at %s)", path)
    classifier = train_classifier(train, heldout, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    classifier.fingerprint = fingerprint
    state = {"state_dict": classifier.net.state_dict(), "accuracy": classifier.accuracy}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    log.info("metrics classifier: held-out accuracy %.3f", classifier.accuracy)
    return classifier
