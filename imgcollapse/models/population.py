"""A population of models trained side by side (`chain.population=[ddpm,vae]`): every member fits the same
training set; their samples, pooled, are the generation's samples (what the regime builds the next set from).

The population is one model to the chain: `fit` fits each member with its own seed, `sample(n)` gives each
member a contiguous block of the n images (image i still depends only on (seed, i)) and records which member
made which block (`ImageSet.members`), so the chain can score each member beside the pool. `save` writes one
directory per member plus population.json; `Population.load` reads them back.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class

from imgcollapse.data import ImageSet
from imgcollapse.errors import DamagedFile

POPULATION_FILE = "population.json"


def member_seed(seed: int, member: int) -> int:
    """Member `member`'s seed from the population's: independent streams, member 0 included."""
    return int(np.random.SeedSequence([seed, 7919, member]).generate_state(1)[0] >> 1)


def blocks(n: int, k: int) -> list[tuple[int, int]]:
    """[start, stop) of each of k members' share of n images: as equal as can be, the first ones larger."""
    edges = np.cumsum([0] + [n // k + (i < n % k) for i in range(k)])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


class Population:
    """K models of possibly different families, fitted on the same data, sampled as one pool."""

    def __init__(self, members: list[tuple[str, Any]]) -> None:
        if not members:
            raise ValueError("a population needs at least one member")
        self.names = [name for name, _ in members]
        self.models = [model for _, model in members]
        classes = {getattr(m, "num_classes", None) for m in self.models}
        if len(classes) != 1:
            raise ValueError(f"population members disagree on class conditioning: {classes}")
        self.num_classes = classes.pop()
        self.config = None  # no `init`: a population always starts from scratch

    def labels(self) -> list[str]:
        """Column suffix of each member: its family, numbered where a family appears more than once."""
        return [name if self.names.count(name) == 1 else f"{name}{i}" for i, name in enumerate(self.names)]

    def fit(self, data: ImageSet, seed: int) -> dict[str, float]:
        """Fit every member on `data`; train_loss is the members' mean, each member's is `model_train_loss_<member>`."""
        stats: dict[str, float] = {}
        losses = []
        for i, (label, model) in enumerate(zip(self.labels(), self.models, strict=True)):
            member = model.fit(data, seed=member_seed(seed, i))
            losses.append(member.get("train_loss", float("nan")))
            stats[f"model_train_loss_{label}"] = member.get("train_loss")
        stats["train_loss"] = float(np.nanmean(losses)) if not all(np.isnan(losses)) else float("nan")
        return stats

    def sample(self, n: int, seed: int, labels: torch.Tensor | None = None) -> ImageSet:
        """n images: member k draws its block with its own seed; `members` says which block is whose."""
        parts, spans = [], []
        for i, ((start, stop), label, model) in enumerate(zip(blocks(n, len(self.models)), self.labels(),
                                                              self.models, strict=True)):
            if stop > start:
                parts.append(model.sample(stop - start, seed=member_seed(seed, i),
                                          labels=labels[start:stop] if labels is not None else None))
            spans.append((label, start, stop))
        return dataclasses.replace(ImageSet.concat(parts), members=spans)

    def save(self, path: Path) -> None:
        """One directory per member (member_<i>_<family>/, each loadable by its family's `load`) and the roster."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        roster = []
        for i, (name, model) in enumerate(zip(self.names, self.models, strict=True)):
            folder = f"member_{i}_{name}"
            model.save(path / folder)
            kind = f"{type(model).__module__}.{type(model).__name__}"
            roster.append({"family": name, "folder": folder, "class": kind})
        (path / POPULATION_FILE).write_text(json.dumps({"members": roster}, indent=1))

    @classmethod
    def load(cls, path: Path, accelerator: Any = None) -> Population:
        """The population `save` wrote: each member rebuilt by its class's `load`, in the saved order (which fixes
        each member's seed and block, so it samples what the saved one did). DamagedFile for a bad population.json."""
        path = Path(path)
        roster_file = path / POPULATION_FILE
        what_to_do = "Restore it from a backup of the model directory (Population.save writes it)"
        try:
            roster = json.loads(roster_file.read_text())["members"]
            entries = [(str(m["family"]), str(m["folder"]), str(m["class"])) for m in roster]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise DamagedFile(roster_file, e, what_to_do) from e
        if not entries:
            raise DamagedFile(roster_file, "no members", what_to_do)
        members = []
        for family, folder, kind in entries:
            if Path(folder).name != folder or folder in ("", ".", ".."):  # a roster names its own subfolders only
                raise DamagedFile(roster_file, f"member folder {folder!r} is not a folder of {path}", what_to_do)
            try:
                model_class = get_class(kind)
            except Exception as e:  # Hydra wraps ImportError and AttributeError in its own
                raise DamagedFile(roster_file, f"member {family!r}'s class {kind} cannot be imported ({e})",
                                  "Install the package that defines it, or restore the file") from e
            members.append((family, model_class.load(path / folder, accelerator=accelerator)))
        return cls(members)
