"""How each generation's training set is built from the real pool and the synthetic sets so far.

Each regime is a class (chosen by `_target_` in conf/regime/) with its own typed config, building each
training set as one function of (real pool, synthetic sets so far, generation, seed):
  replace     the last generation's samples only (the fully synthetic loop)
  accumulate  the real pool plus every synthetic set so far, optionally subsampled to a fixed size
  fresh       real images no earlier generation trained on, plus the last samples, at `real_fraction`, while
              the pool lasts (generation 0 trains on `first_real` of it); then real images earlier generations
              trained on are redrawn, and each row counts them (num_real_reused)
  augment     a fixed real subset (drawn once) plus the last samples, at `real_fraction`
  real_plus   the whole real pool plus `synthetic_ratio` x its size of the last samples (Bertrand et al.'s
              mix: all real data, lambda * n synthetic images)
  contaminated  a pool without provenance, as the web's: the real pool plus `published_fraction` of every
              generation's samples; a `filter` (none | oracle | detector | watermark) removes what it flags as
              generated, and `subsample` images are drawn from what is left. Rows record the pool's synthetic
              share and the filter's true- and false-positive rates, measured against the provenance the kit knows

Randomness comes from (seed, generation, purpose) only, where `seed` is the chain's seed: a resumed chain
builds the same sets, and augment's real subset is the same in every generation.

Curation (any regime, Feng et al. 2024): the model makes `num_candidates(n)` samples and `curate` chooses the
(at most) `n` that later generations train on. One rule for every judge: keep the `n` candidates it scores highest
among those it accepts (`top_n`), so two curations with the same keep_fraction differ only in who judges.
  none        keep every sample (no extra candidates)
  reward      reward curation: the metrics classifier's probability of its predicted class; keep the `n` it
              finds least ambiguous (the name until kit 0.3, `confidence`, still works). The judge is also the
              ruler: what it selects, it then scores
  condition   the metrics classifier's probability of the sample's own label (the class a conditional model
              was asked for); keep the top `n` (for unconditional models it equals `reward`)
  verify      verification as Feng et al. mean it: an independent verifier (imgcollapse/verifier.py: its own
              architecture, seed and cache, trained on real images the ruler never trains on) scores each sample
              (a class-conditional model's: its probability of the requested class; an unconditional one's: its
              top-class confidence) and accepts it when that is at least `verify_threshold` and, for a
              conditional model, its label is the requested class; the top `n` accepted are kept (fewer if fewer
              pass: the row says how many). For an unconditional model this is a confidence filter by another
              network, reward's rule with another judge, not a check of correctness; only the label check of a
              conditional model tests something a sample can get wrong
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING
from scipy.stats import ConstantInputWarning, spearmanr

from imgcollapse.data import ImageSet
from imgcollapse.data.transforms import floor_of
from imgcollapse.errors import UserError, require
from imgcollapse.verifier import load_or_train_verifier, training_images
from imgcollapse.watermark import calibrate as calibrate_watermark
from imgcollapse.watermark import embed, robustness, scores
from imgcollapse.watermark import key as watermark_key

log = logging.getLogger(__name__)

CURATIONS = ("none", "reward", "confidence", "condition", "verify")  # confidence: reward's name until kit 0.3


def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *tags]))


@dataclass
class RegimeConfig:
    """Keys every regime has: the curation of its synthetic data (conf/regime/*.yaml)."""

    _target_: str = MISSING
    curation: str = MISSING  # verifier that filters synthetic samples (CURATIONS)
    keep_fraction: float = MISSING  # curation: share of the candidates kept
    verify_threshold: float = MISSING  # curation=verify: the verifier's least score to accept a sample
    verifier_seed: int = MISSING  # curation=verify: the verifier's training seed (conf: ${seed}, the chain's own)
    verifier_epochs: int = MISSING  # curation=verify: passes over the floor split to train the verifier

    def check(self) -> None:
        """The regime's own keys (ConfigError naming the key)."""
        require(self.curation in CURATIONS, "regime.curation", self.curation, f"one of {list(CURATIONS)}")
        require(0 < self.keep_fraction <= 1, "regime.keep_fraction", self.keep_fraction,
                "a fraction in (0, 1]: the share of candidates curation keeps")
        require(0 <= self.verify_threshold < 1, "regime.verify_threshold", self.verify_threshold,
                "a probability in [0, 1) (0: no least score, the verifier only ranks and checks labels)")
        require(self.verifier_seed >= 0, "regime.verifier_seed", self.verifier_seed, "an integer >= 0")
        require(self.verifier_epochs >= 1, "regime.verifier_epochs", self.verifier_epochs, "an integer >= 1")

    def training_size(self, num_synthetic: int) -> tuple[str, int] | None:
        """(config key, size) of every training set after generation 0, or None where it grows (never smaller
        than generation 0's real pool)."""
        return "num_synthetic", num_synthetic

    def check_data(self, *, num_train: int, num_classes: int | None, num_synthetic: int, model: Any,
                   has_classifier: bool) -> None:
        """Checks that need the loaded data (the real pool's size and class count) and the chain's model config
        (`model.check_training_size` where it has one): curation's judge must exist."""
        require(self.curation in ("none", "verify") or has_classifier, "regime.curation", self.curation,
                "'none' here: this curation's judge is the metrics classifier, which needs labelled data and "
                "'classifier' in metrics.extractors")
        require(self.curation != "verify" or num_classes is not None, "regime.curation", self.curation,
                "'none' here: the verifier is trained on the real pool's class labels, and this dataset has none")
        # an unconditional model asks for no class: at threshold 0 and keep_fraction 1 the verifier keeps everything
        require(self.curation != "verify" or getattr(model, "num_classes", None) or self.verify_threshold > 0
                or self.keep_fraction < 1, "regime.verify_threshold", self.verify_threshold,
                "> 0, or regime.keep_fraction < 1, for an unconditional model, which asks for no class: with neither "
                "the verifier keeps every candidate (a threshold accepts what it is this sure of, e.g. 0.9; a "
                "keep_fraction keeps the share it ranks highest)")


@dataclass
class ReplaceConfig(RegimeConfig):
    _target_: str = "imgcollapse.regimes.Replace"


@dataclass
class AccumulateConfig(RegimeConfig):
    _target_: str = "imgcollapse.regimes.Accumulate"
    subsample: int | None = MISSING  # draw this many images from everything so far (None: all)

    def check(self) -> None:
        super().check()
        require(self.subsample is None or self.subsample > 0, "regime.subsample", self.subsample,
                "null or an integer > 0")

    def training_size(self, num_synthetic: int) -> tuple[str, int] | None:
        return None if self.subsample is None else ("regime.subsample", self.subsample)

    def check_data(self, *, num_train: int, num_synthetic: int, **chain: Any) -> None:
        super().check_data(num_train=num_train, num_synthetic=num_synthetic, **chain)
        pool = num_train + num_synthetic  # what generation 1 draws from, the smallest pool
        require(self.subsample is None or self.subsample <= pool, "regime.subsample", self.subsample,
                f"null or at most {pool}: generation 1 draws from the real pool's {num_train} images and "
                f"num_synthetic={num_synthetic} samples")


FILTERS = ("none", "oracle", "detector", "watermark")  # what removes generated images from a contaminated pool


@dataclass
class ContaminatedConfig(AccumulateConfig):
    _target_: str = "imgcollapse.regimes.Contaminated"
    published_fraction: float = MISSING  # share of each generation's samples that enter the pool
    filter: str = MISSING  # FILTERS: none; oracle (knows provenance: the upper bound); detector (learned); watermark
    detector_fpr: float = MISSING  # filter=detector|watermark: the share of real images it may flag (its threshold)
    detector_epochs: int = MISSING  # filter=detector: passes over its training images each generation
    detector_seed: int = MISSING  # filter=detector: its training seed (conf: ${seed}, the chain's)
    watermark_strength: float = 24.0  # filter=watermark: grey levels (of 255) the mark adds or takes
    watermark_block: int = 1  # filter=watermark: the key's tiles, block x block pixels
    watermark_seed: int = 0  # filter=watermark: the provider's secret key (conf: ${seed}, the chain's)

    def check(self) -> None:
        super().check()
        require(0 < self.published_fraction <= 1, "regime.published_fraction", self.published_fraction,
                "a fraction in (0, 1]: the share of each generation's samples that enters the pool")
        require(self.filter in FILTERS, "regime.filter", self.filter, f"one of {list(FILTERS)}")
        require(0 <= self.detector_fpr < 1, "regime.detector_fpr", self.detector_fpr,
                "a rate in [0, 1): the share of real images the detector may flag")
        require(self.detector_epochs >= 1, "regime.detector_epochs", self.detector_epochs, "an integer >= 1")
        require(self.detector_seed >= 0, "regime.detector_seed", self.detector_seed, "an integer >= 0")
        require(0 < self.watermark_strength <= 255, "regime.watermark_strength", self.watermark_strength,
                "grey levels in (0, 255]: how deep the mark is added")
        require(self.watermark_block >= 1, "regime.watermark_block", self.watermark_block, "an integer >= 1")
        require(self.watermark_seed >= 0, "regime.watermark_seed", self.watermark_seed, "an integer >= 0")

    def check_data(self, *, num_train: int, num_synthetic: int, **chain: Any) -> None:
        published = max(1, round(self.published_fraction * num_synthetic))
        super().check_data(num_train=num_train, num_synthetic=published, **chain)
        model = chain.get("model")
        require(self.filter != "detector" or published >= 2, "regime.published_fraction", self.published_fraction,
                f"at least 2 / num_synthetic={num_synthetic} with regime.filter=detector: it trains on half of each "
                "generation's published samples")
        if self.filter == "oracle" and self.subsample is not None:
            require(self.subsample <= num_train, "regime.subsample", self.subsample,
                    f"null or at most the real pool's {num_train} images: the oracle filter leaves only those")
        if self.subsample is not None and hasattr(model, "check_training_size"):
            model.check_training_size("regime.subsample", self.subsample, "every generation trains on that many")


@dataclass
class MixConfig(RegimeConfig):
    real_fraction: float = MISSING  # share of real images in each training set

    def check(self) -> None:
        super().check()
        require(0 <= self.real_fraction <= 1, "regime.real_fraction", self.real_fraction, "a fraction in [0, 1]")


@dataclass
class RealPlusConfig(RegimeConfig):
    _target_: str = "imgcollapse.regimes.RealPlus"
    synthetic_ratio: float = MISSING  # lambda: synthetic images per real image (all real images are kept)

    def check(self) -> None:
        super().check()
        require(self.synthetic_ratio >= 0, "regime.synthetic_ratio", self.synthetic_ratio,
                "a ratio >= 0 (lambda: synthetic images per real image; 0 retrains on the real pool alone)")

    def training_size(self, num_synthetic: int) -> tuple[str, int] | None:
        return None  # the real pool plus lambda times it: never smaller than generation 0's

    def num_synthetic_used(self, num_real: int) -> int:
        """How many of the last generation's samples each training set takes: lambda x the real pool."""
        return round(self.synthetic_ratio * num_real)

    def check_data(self, *, num_train: int, num_synthetic: int, **chain: Any) -> None:
        super().check_data(num_train=num_train, num_synthetic=num_synthetic, **chain)
        wanted = self.num_synthetic_used(num_train)
        require(wanted <= num_synthetic, "regime.synthetic_ratio", self.synthetic_ratio,
                f"at most {num_synthetic / num_train:.4g}: each training set takes synthetic_ratio x the real "
                f"pool's {num_train} images = {wanted} samples, and each generation makes num_synthetic="
                f"{num_synthetic} (raise num_synthetic for a larger ratio)")


@dataclass
class FreshConfig(MixConfig):
    _target_: str = "imgcollapse.regimes.Fresh"
    first_real: int | None = MISSING  # real images generation 0 trains on (None: the whole pool, nothing left fresh)

    def check(self) -> None:
        super().check()
        require(self.first_real is None or self.first_real > 0, "regime.first_real", self.first_real,
                "null (the whole real pool) or an integer > 0")

    def check_data(self, *, num_train: int, model: Any, **chain: Any) -> None:
        super().check_data(num_train=num_train, model=model, **chain)
        if self.first_real is None:
            return
        require(self.first_real <= num_train, "regime.first_real", self.first_real,
                f"null (the whole pool) or at most the real pool's {num_train} images")
        if hasattr(model, "check_training_size"):
            model.check_training_size("regime.first_real", self.first_real,
                                      "generation 0 trains on that many real images")


@dataclass
class AugmentConfig(MixConfig):
    _target_: str = "imgcollapse.regimes.Augment"
    train_size: int | None = None  # images in each training set after generation 0 (None: the last samples' count)

    def check(self) -> None:
        super().check()
        require(self.train_size is None or self.train_size > 0, "regime.train_size", self.train_size,
                "null (the last samples' count, num_synthetic) or an integer > 0")

    def training_size(self, num_synthetic: int) -> tuple[str, int] | None:
        return ("num_synthetic", num_synthetic) if self.train_size is None else ("regime.train_size", self.train_size)

    def check_data(self, *, num_train: int, num_synthetic: int, **chain: Any) -> None:
        super().check_data(num_train=num_train, num_synthetic=num_synthetic, **chain)
        if self.train_size is None:
            return
        wanted = round(self.real_fraction * self.train_size)
        require(wanted <= num_train, "regime.train_size", self.train_size,
                f"at most {math.floor(num_train / self.real_fraction) if self.real_fraction else num_train} here: "
                f"real_fraction={self.real_fraction} of it is {wanted} real images, and the real pool holds "
                f"{num_train} (set regime.train_size with dataset.pool_size)")
        synthetic = self.train_size - wanted
        require(synthetic <= num_synthetic, "regime.train_size", self.train_size,
                f"at most what the real pool's {num_train} images and num_synthetic={num_synthetic} samples fill at "
                f"real_fraction={self.real_fraction}: it takes {synthetic} samples")


class Regime:
    """What every regime shares: the composition bookkeeping and curation. A kind defines `_parts`."""

    Config: type[RegimeConfig] = RegimeConfig
    kind = "regime"  # the conf/regime/ name, for messages
    by_source = False  # whether rows record the share each earlier generation holds (only accumulate mixes several)
    first_set_is_pool = False  # True: generation 0 trains on the whole real pool whatever the regime's other keys
    # (resume: chains of a study that differ only in those keys share generation 0); a regime says so itself

    def __init__(self, config: RegimeConfig, num_synthetic: int | None = None) -> None:
        self.config = config
        self.num_synthetic = num_synthetic  # what curation keeps of each generation's samples (top-level key)
        self.verifier = None  # curation=verify: set by `setup`
        self.conditional = False  # whether candidates' labels are the classes they were asked for

    def first_set(self, real: ImageSet, seed: int) -> tuple[ImageSet, dict[str, float]]:
        """Generation 0's training set and its composition: the whole real pool (fresh: its first_real)."""
        return real, {"num_real": len(real), "num_synthetic": 0}

    def setup(self, train: ImageSet, heldout: ImageSet, cache_dir: Path, conditional: bool,
              generation: int | None = None, floor: ImageSet | None = None) -> None:
        """What the regime needs before the chain runs: with curation=verify, the independent verifier (trained on
        the floor split `floor`, real images the metrics classifier never trains on, or read from its cache).
        `conditional`: the model samples the classes it is asked for; `generation`: the chain's last, for a regime
        that plans ahead (fresh)."""
        self.conditional = conditional
        if self.config.curation == "verify":
            self.verifier = load_or_train_verifier(training_images(train, heldout, floor), heldout, cache_dir,
                                                   epochs=self.config.verifier_epochs, seed=self.config.verifier_seed)
            log.info("curation verifier: held-out accuracy %.3f (fingerprint %s)", self.verifier.accuracy,
                     self.verifier.fingerprint)

    def training_set(
        self, real: ImageSet, synthetic: list[ImageSet], generation: int, seed: int
    ) -> tuple[ImageSet, dict[str, float]]:
        """The training set of `generation` (≥ 1) and its composition (num_real, num_synthetic, shares)."""
        if generation < 1 or len(synthetic) != generation:
            raise ValueError(f"generation {generation} needs the {generation} synthetic sets before it")
        return _combine(self._parts(real, synthetic, generation, seed), generation, by_source=self.by_source)

    def _parts(self, real: ImageSet, synthetic: list[ImageSet], generation: int, seed: int) -> list[tuple]:
        raise NotImplementedError

    # Curation -----------------------------------------------------------------------------------
    def _count(self, n: int | None) -> int:
        if n is None and self.num_synthetic is None:
            raise ValueError(f"{type(self).__name__} was built without num_synthetic: build it as "
                             "config.build(config.regime, num_synthetic=N), or pass the count")
        return self.num_synthetic if n is None else n

    def num_candidates(self, n: int | None = None) -> int:
        """How many samples the model makes so that curation can keep `n` of them (default: num_synthetic)."""
        n = self._count(n)
        return n if self.config.curation == "none" else math.ceil(n / self.config.keep_fraction)

    def curate(self, candidates: ImageSet, probs: np.ndarray | None, n: int | None = None
               ) -> tuple[ImageSet, dict[str, float | None]]:
        """The `n` candidates (default: num_synthetic) the curation's judge scores highest among those it accepts, in
        their original order, and curation stats (`probs`: the metrics classifier's class probabilities)."""
        n = self._count(n)
        if self.config.curation == "none":
            return candidates.subset(np.arange(n)), {}
        if self.config.curation == "verify":
            return self._verify(candidates, probs, n)
        if probs is None:
            raise ValueError("curation needs the metrics classifier's class probabilities")
        scores = verifier_scores(self.config.curation, probs, candidates.labels)
        keep = top_n(scores, n)
        return candidates.subset(keep), _score_stats(scores, keep)

    def _verify(self, candidates: ImageSet, ruler_probs: np.ndarray | None, n: int
                ) -> tuple[ImageSet, dict[str, float | None]]:
        """The top `n` candidates by the independent verifier's score among those it accepts (reward's rule, another
        judge), how many it accepted and how its ranking agrees with the ruler's (`ruler_probs`)."""
        if self.verifier is None:
            raise ValueError("regime.curation=verify needs Regime.setup to build the verifier first")
        probs = self.verifier(candidates.images)
        requested = np.asarray(candidates.labels) if self.conditional else None  # else: the ruler's labels, no ask
        scores = judge_scores(probs, requested)
        accepted = scores >= self.config.verify_threshold
        if self.conditional:
            agrees = probs.argmax(axis=1) == requested
            accepted &= agrees
        keep = top_n(scores, n, accepted)
        if not len(keep):
            raise UserError(f"the verifier accepted none of {len(candidates)} candidates: lower "
                            f"regime.verify_threshold={self.config.verify_threshold} or raise the candidates "
                            f"(lower regime.keep_fraction={self.config.keep_fraction})")
        if len(keep) < n:
            log.warning("the verifier accepted %d of %d candidates, fewer than the %d wanted: the next generation "
                        "trains on %d (lower regime.keep_fraction for more candidates)", accepted.sum(),
                        len(candidates), n, len(keep))
        stats: dict[str, float | None] = {**_score_stats(scores, keep), "num_verified": int(accepted.sum()),
                                          "verified_share": float(accepted.mean())}
        if self.conditional:
            stats["verifier_agreement"] = float(agrees.mean())  # share whose verifier label is the requested class
        if ruler_probs is not None:  # the ruler's score defined as the verifier's: how far the two judges agree
            stats["verifier_ruler_spearman"] = spearman(scores, judge_scores(ruler_probs, requested))
        return candidates.subset(keep), stats


class Replace(Regime):
    """`regime=replace`: the last generation's samples only (the fully synthetic loop)."""

    Config = ReplaceConfig
    kind = "replace"
    first_set_is_pool = True

    def _parts(self, real: ImageSet, synthetic: list[ImageSet], generation: int, seed: int) -> list[tuple]:
        return [("real", real.subset([])), (generation - 1, synthetic[-1])]


class Accumulate(Regime):
    """`regime=accumulate`: the real pool plus every synthetic set so far, optionally subsampled."""

    Config = AccumulateConfig
    kind = "accumulate"
    first_set_is_pool = True
    by_source = True

    def _parts(self, real: ImageSet, synthetic: list[ImageSet], generation: int, seed: int) -> list[tuple]:
        parts = [("real", real)] + list(enumerate(synthetic))
        if self.config.subsample is not None:
            parts = _subsample(parts, self.config.subsample, _rng(seed, generation, 1))
        return parts


class Contaminated(Accumulate):
    """`regime=contaminated`: the real pool and `published_fraction` of every generation's samples mix without
    provenance; the `filter` removes what it flags, and `subsample` images are drawn from the rest (all: null). With
    filter=none and published_fraction=1 it is `regime=accumulate` with the same subsample, image for image."""

    Config = ContaminatedConfig
    kind = "contaminated"

    def __init__(self, config: ContaminatedConfig, num_synthetic: int | None = None) -> None:
        super().__init__(config, num_synthetic)
        self.floor: ImageSet | None = None  # filter=detector: its real images (setup)
        self._stats: dict[str, float | None] = {}
        self._floor_mask: np.ndarray | None = None  # filter=detector: which real pool images are the floor's

    def setup(self, train: ImageSet, heldout: ImageSet, cache_dir: Path, conditional: bool,
              generation: int | None = None, floor: ImageSet | None = None) -> None:
        super().setup(train, heldout, cache_dir, conditional, generation, floor)
        self.floor = floor_of(train, heldout, floor)

    def published(self, synthetic: list[ImageSet], seed: int) -> list[ImageSet]:
        """What of each generation's samples entered the pool: a share drawn once, by the generation that made it
        (with filter=watermark: before the provider marks it, `_marked`)."""
        if self.config.published_fraction == 1:
            return list(synthetic)
        out = []
        for g, s in enumerate(synthetic):
            count = max(1, round(self.config.published_fraction * len(s)))
            out.append(s.subset(np.sort(_rng(seed, g, 6).choice(len(s), count, replace=False))))
        return out

    def _marked(self, published: list[ImageSet]) -> list[ImageSet]:
        """The published images as they reach the pool: with filter=watermark, marked by the provider."""
        if self.config.filter != "watermark":
            return published
        return [ImageSet(embed(s.images, self._pattern(s), self.config.watermark_strength), s.labels, s.class_names)
                for s in published]

    def _pattern(self, images: ImageSet) -> Any:
        """The watermark's key for images of this shape."""
        return watermark_key(tuple(images.images.shape[1:]), self.config.watermark_seed, self.config.watermark_block)

    def flag(self, pool: list[tuple], generation: int, seed: int) -> list[np.ndarray]:
        """Which of each part's images the filter calls generated (the parts as `_parts` builds them)."""
        kind = self.config.filter
        if kind == "none":
            return [np.zeros(len(s), dtype=bool) for _, s in pool]
        if kind == "oracle":
            return [np.full(len(s), source != "real") for source, s in pool]
        if kind == "watermark":
            return self._watermark_flags(pool)
        detector, trained_on = self._train_detector(pool, generation, seed)
        flags = [detector.flags(s.images) for _, s in pool]
        self._stats.update({"detector_threshold": detector.threshold,
                            "detector_calibration_fpr": detector.calibration_fpr})
        generated = [f[~seen] for (source, _), f, seen in zip(pool, flags, trained_on, strict=True)
                     if source != "real"]
        held = np.concatenate(generated) if generated else np.zeros(0, dtype=bool)
        self._stats["detector_tpr_unseen"] = float(held.mean()) if len(held) else None
        real_flags, real_unseen = flags[0], ~trained_on[0]
        self._stats["detector_fpr_unseen"] = float(real_flags[real_unseen].mean()) if real_unseen.any() else None
        return flags

    def _watermark_flags(self, pool: list[tuple]) -> list[np.ndarray]:
        """Which images carry the mark: correlation with the key above a threshold that flags at most detector_fpr
        of the floor's real images; its false-positive rate on the pool's other real images is recorded apart."""
        if self.floor is None:
            raise ValueError("regime.filter=watermark needs Regime.setup to give it the floor split first")
        pattern = self._pattern(self.floor)
        threshold, calibration_fpr = calibrate_watermark(self.floor.images, pattern, self.config.detector_fpr)
        flags = [scores(s.images, pattern) > threshold for _, s in pool]
        unseen = ~self._floor_in(pool[0][1])
        self._stats.update({"watermark_threshold": threshold, "watermark_calibration_fpr": calibration_fpr,
                            "watermark_fpr_unseen": float(flags[0][unseen].mean()) if unseen.any() else None})
        return flags

    def _train_detector(self, pool: list[tuple], generation: int, seed: int):
        """This generation's detector, and per part which images it has seen: half the floor (the other half sets
        its threshold) against a fixed half of each published set. Imported late: only filter=detector needs it."""
        from imgcollapse.detector import train_detector

        if self.floor is None:
            raise ValueError("regime.filter=detector needs Regime.setup to give it the floor split first (it runs in "
                             "the main process only: the detector filter is refused with several processes)")
        c = self.config
        order = _rng(c.detector_seed, 0, 9).permutation(len(self.floor))
        half = len(order) // 2
        real_train, calibration = self.floor.subset(np.sort(order[:half])), self.floor.subset(np.sort(order[half:]))
        seen, generated = [], []
        for source, s in pool:
            mask = np.zeros(len(s), dtype=bool)
            if source != "real":
                mask[_rng(seed, source, 7).permutation(len(s))[: len(s) // 2]] = True
                generated.append(s.subset(np.flatnonzero(mask)))
            seen.append(mask)
        seen[0] = self._floor_in(pool[0][1])
        detector = train_detector(real_train, ImageSet.concat(generated), calibration, fpr=c.detector_fpr,
                                  epochs=c.detector_epochs, seed=c.detector_seed * 1000 + generation)
        return detector, seen

    def _floor_in(self, real: ImageSet) -> np.ndarray:
        """Which of the pool's real images are the floor's, which trained the detector or set its threshold (the
        floor is drawn from the pool): its "unseen" false-positive rate is measured on the rest. The same pool every
        generation, so matched once."""
        if self._floor_mask is None or len(self._floor_mask) != len(real):
            floor = {bytes(img.numpy()) for img in self.floor.images}
            self._floor_mask = np.array([bytes(img.numpy()) in floor for img in real.images], dtype=bool)
        return self._floor_mask

    def _parts(self, real: ImageSet, synthetic: list[ImageSet], generation: int, seed: int) -> list[tuple]:
        self._stats = {}
        published = self.published(synthetic, seed)
        pool = [("real", real)] + list(enumerate(self._marked(published)))
        flags = self.flag(pool, generation, seed)
        if self.config.filter == "watermark":  # what survives what may happen to the newest published images
            self._stats.update(robustness(published[-1].images, self._pattern(published[-1]),
                                          self.config.watermark_strength, self._stats["watermark_threshold"]))
        kept = [(source, s.subset(np.flatnonzero(~f))) for (source, s), f in zip(pool, flags, strict=True)]
        real_flags = flags[0]
        synthetic_flags = np.concatenate(flags[1:]) if len(flags) > 1 else np.zeros(0, dtype=bool)
        pool_size = sum(len(s) for _, s in pool)
        self._stats.update({
            "num_pool": pool_size, "pool_synthetic_share": len(synthetic_flags) / pool_size,
            "num_flagged": int(real_flags.sum() + synthetic_flags.sum()),
            "filter_tpr": float(synthetic_flags.mean()) if len(synthetic_flags) else None,
            "filter_fpr": float(real_flags.mean()) if len(real_flags) else None,
        })
        if self.config.subsample is None:
            return kept
        left = sum(len(s) for _, s in kept)
        if left < self.config.subsample:
            log.warning("generation %d: the filter left %d images of the pool's %d, fewer than regime.subsample=%d: "
                        "it trains on all %d", generation, left, pool_size, self.config.subsample, left)
            return kept
        return _subsample(kept, self.config.subsample, _rng(seed, generation, 1))

    def training_set(self, real: ImageSet, synthetic: list[ImageSet], generation: int, seed: int
                     ) -> tuple[ImageSet, dict[str, float]]:
        data, composition = super().training_set(real, synthetic, generation, seed)
        return data, {**composition, **self._stats}


class Fresh(Regime):
    """`regime=fresh`: a new draw of real images each generation plus the last samples, at `real_fraction`."""

    Config = FreshConfig
    kind = "fresh"
    records_reuse = True  # rows count the real images an earlier generation trained on (num_real_reused)
    first_set_is_pool = False  # generation 0 trains on regime.first_real of the pool

    def _first_count(self, num_pool: int) -> int:
        first = self.config.first_real
        return num_pool if first is None else min(first, num_pool)

    def _order(self, num_pool: int, seed: int) -> np.ndarray:
        """The order in which the pool's images are handed out: generation 0's first, then each generation's."""
        return _rng(seed, 0, 5).permutation(num_pool)

    def _num_real(self, real: ImageSet, size: int) -> int:
        return min(len(real), round(self.config.real_fraction * size))

    def first_set(self, real: ImageSet, seed: int) -> tuple[ImageSet, dict[str, float]]:
        n0 = self._first_count(len(real))
        data = real if n0 == len(real) else real.subset(np.sort(self._order(len(real), seed)[:n0]))
        return data, {"num_real": n0, "num_synthetic": 0, "num_real_reused": 0}

    def _real_index(self, num_pool: int, sizes: list[int], generation: int, seed: int) -> tuple[np.ndarray, int]:
        """Indices of generation `generation`'s real images (it needs sizes[-1]; sizes[h - 1]: what generation h
        needed) and how many of them an earlier generation trained on. Fresh ones come next in `_order`; when the
        pool is spent the rest is drawn, without replacement, from the images generations before used."""
        order = self._order(num_pool, seed)
        start = min(num_pool, self._first_count(num_pool) + sum(sizes[:-1]))  # images earlier generations had
        fresh = order[start : start + sizes[-1]]
        need = sizes[-1] - len(fresh)
        used = np.sort(order[:start])  # the whole pool once spent: the draw is then the kit 0.2 one, bit for bit
        reused = used[_rng(seed, generation, 2).choice(len(used), need, replace=False)] if need else used[:0]
        return np.concatenate([fresh, reused]), need

    def _size(self, num_samples: int) -> int:
        """Each training set's size: the last samples' count (augment: `train_size` where it is set)."""
        return getattr(self.config, "train_size", None) or num_samples

    def _parts(self, real: ImageSet, synthetic: list[ImageSet], generation: int, seed: int) -> list[tuple]:
        last = synthetic[-1]
        size = self._size(len(last))
        sizes = [self._num_real(real, self._size(len(s))) for s in synthetic]
        real_idx, self._reused = self._real_index(len(real), sizes, generation, seed)
        syn_idx = _rng(seed, generation, 3).choice(len(last), size - sizes[-1], replace=False)
        return [("real", real.subset(np.sort(real_idx))), (generation - 1, last.subset(np.sort(syn_idx)))]

    def training_set(self, real: ImageSet, synthetic: list[ImageSet], generation: int, seed: int
                     ) -> tuple[ImageSet, dict[str, float]]:
        data, composition = super().training_set(real, synthetic, generation, seed)
        if self.records_reuse:
            composition["num_real_reused"] = self._reused
        return data, composition

    def fresh_generations(self, num_pool: int, num_synthetic: int) -> int:
        """How many generations after 0 get only real images no earlier generation trained on (num_synthetic
        samples a generation)."""
        per = min(num_pool, round(self.config.real_fraction * num_synthetic))
        return (num_pool - self._first_count(num_pool)) // per if per else 10**9

    def setup(self, train: ImageSet, heldout: ImageSet, cache_dir: Path, conditional: bool,
              generation: int | None = None, floor: ImageSet | None = None) -> None:
        super().setup(train, heldout, cache_dir, conditional, generation, floor)
        num_synthetic = self.num_synthetic
        if not self.records_reuse or num_synthetic is None:
            return
        n, n0 = len(train), self._first_count(len(train))
        per = min(n, round(self.config.real_fraction * num_synthetic))
        served = self.fresh_generations(n, num_synthetic)
        plan = (f"regime=fresh: the real pool holds {n} images; generation 0 trains on {n0} "
                f"(regime.first_real), each later generation on {per} real ones, so fresh real images last "
                f"{served} generation{'s' * (served != 1)} after generation 0")
        if generation is not None and served < generation:
            log.warning("%s, not the %d this chain asks for: from generation %d on, the real share is drawn from "
                        "images earlier generations trained on (each row's num_real_reused counts them). A larger "
                        "dataset, a smaller regime.first_real or regime.real_fraction serves more", plan, generation,
                        served + 1)
        else:
            log.info("%s: enough for generations 1..%s", plan, generation)


class Augment(Fresh):
    """`regime=augment`: a fixed real subset (drawn once for the chain) plus the last samples, at `real_fraction`."""

    Config = AugmentConfig
    kind = "augment"
    records_reuse = False  # the same real subset every generation is the point
    first_set_is_pool = True

    def first_set(self, real: ImageSet, seed: int) -> tuple[ImageSet, dict[str, float]]:
        return Regime.first_set(self, real, seed)

    def _real_index(self, num_pool: int, sizes: list[int], generation: int, seed: int) -> tuple[np.ndarray, int]:
        # one permutation: the same subset every time
        return _rng(seed, 0, 2).permutation(num_pool)[: sizes[-1]], sizes[-1]


class RealPlus(Regime):
    """`regime=real_plus`: the whole real pool plus lambda x its size of the last samples, drawn without replacement
    (Bertrand et al. 2024, `mix` in their iterative_retraining.py)."""

    Config = RealPlusConfig
    kind = "real_plus"
    first_set_is_pool = True

    def _parts(self, real: ImageSet, synthetic: list[ImageSet], generation: int, seed: int) -> list[tuple]:
        last = synthetic[-1]
        wanted = self.config.num_synthetic_used(len(real))
        if wanted > len(last):
            raise ValueError(f"regime.synthetic_ratio={self.config.synthetic_ratio} needs {wanted} samples of "
                             f"generation {generation - 1}, which made {len(last)} (raise num_synthetic)")
        syn_idx = _rng(seed, generation, 4).choice(len(last), wanted, replace=False)
        return [("real", real), (generation - 1, last.subset(np.sort(syn_idx)))]


def verifier_scores(curation: str, probs: np.ndarray, labels: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """Per-sample score in [0, 1] of a ruler curation from the metrics classifier's class probabilities [N, K]."""
    if curation in ("reward", "confidence") or (curation == "condition" and labels is None):
        return judge_scores(probs)
    if curation == "condition":
        return judge_scores(probs, labels)
    raise ValueError(f"regime.curation={curation!r} is not one of {CURATIONS}")


def judge_scores(probs: np.ndarray, requested: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """A judge's score of each sample from its class probabilities [N, K]: its probability of the `requested` class
    (a conditional model's), or with none its top-class confidence."""
    if requested is None:
        return probs.max(axis=1)
    return probs[np.arange(len(probs)), np.asarray(requested)]


def top_n(scores: np.ndarray, n: int, accepted: np.ndarray | None = None) -> np.ndarray:
    """Indices of the `n` highest `scores` among the `accepted` (default: all), in their original order; ties go to
    the earlier candidate. Every curation keeps by this one rule."""
    order = np.argsort(-scores, kind="stable")
    if accepted is not None:
        order = order[accepted[order]]
    return np.sort(order[:n])


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two score vectors (scipy; ties at their mean rank); None where it is undefined
    (fewer than two samples, or one side constant)."""
    if len(a) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)  # constant scores: undefined, returned as None
        rho = float(spearmanr(a, b).statistic)
    return rho if np.isfinite(rho) else None


def _score_stats(scores: np.ndarray, keep: np.ndarray) -> dict[str, float]:
    """The row's curation columns every judge shares: candidates, the lowest score kept, the mean kept and overall."""
    return {"num_candidates": len(scores), "curation_threshold": float(scores[keep].min()),
            "curated_score": float(scores[keep].mean()), "candidate_score": float(scores.mean())}


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
