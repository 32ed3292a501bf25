"""Datasets: the typed config every loader shares and `Splits` (training pool, held-out split, real floor) of
`ImageSet`s (imgcollapse/images.py, re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from imgcollapse.errors import require
from imgcollapse.images import ImageSet, to_float, to_uint8  # noqa: F401  (the data's own type, re-exported)


@dataclass
class Splits:
    """A dataset split once: what generation 0 trains on, and what every generation is scored against."""

    train: ImageSet
    heldout: ImageSet
    info: dict = field(default_factory=dict)  # facts about the loading worth keeping in run.json (skipped files...)
    # the real floor: real images like the held-out split's (same size, same class make-up) that the metrics
    # classifier does not train on; drawn from the pool before any long tail (None: the metrics draw it)
    floor: ImageSet | None = None
    # the pool the metrics classifier learns from (less the floor): the pool before any long tail, so one ruler
    # scores every arm (None: the training pool itself)
    ruler_pool: ImageSet | None = None

    def fingerprint(self) -> dict[str, str]:
        """Content hashes of the training pool and held-out split: what a resume compares."""
        return {"train": self.train.fingerprint(), "heldout": self.heldout.fingerprint()}

    def describe(self) -> dict:
        """What run.json records about the data: sizes, shape, class names, the loader's facts, fingerprint."""
        return {"num_train": len(self.train), "num_heldout": len(self.heldout), "image_shape": list(self.train.shape),
                "class_names": self.train.class_names, **self.info, "fingerprint": self.fingerprint()}


@dataclass
class DatasetConfig:
    """Keys every dataset has (`dataset.*`); each loader's config adds its own."""

    _target_: str = MISSING
    image_size: int = MISSING
    channels: int = MISSING
    split_seed: int = MISSING
    long_tail: float = MISSING
    tail_seed: int | None = MISSING  # which classes the long tail makes rare (transforms.tail_order); None: by index
    pool_size: int | None = None  # the training pool cut to this many images, nested across sizes (None: all)
    pool_seed: int = 0  # which images a cut pool keeps (conf: ${seed}, the chain's)

    def check(self) -> None:
        """The shared keys; a dataset's own keys are checked by its subclass."""
        require(self.image_size > 0, "dataset.image_size", self.image_size, "an integer > 0")
        require(self.channels in (1, 3), "dataset.channels", self.channels, "1 or 3")
        require(self.long_tail >= 0, "dataset.long_tail", self.long_tail,
                "a Zipf exponent ≥ 0 (0: classes as they are)")
        require(0 <= self.split_seed < 2**32, "dataset.split_seed", self.split_seed, "an integer in [0, 2**32)")
        require(self.tail_seed is None or 0 <= self.tail_seed < 2**32, "dataset.tail_seed", self.tail_seed,
                "null (the class index is the rank) or an integer in [0, 2**32)")
        require(self.pool_size is None or self.pool_size >= 2, "dataset.pool_size", self.pool_size,
                "null (the whole training pool) or an integer >= 2")
        require(0 <= self.pool_seed < 2**32, "dataset.pool_seed", self.pool_seed, "an integer in [0, 2**32)")
