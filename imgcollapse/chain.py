"""The generational loop. For each generation: build the training set, fit, draw samples, score and curate them,
write the generation, mark it done.

Everything a generation produces lands in `gen_XXX/` and counts only once `gen_XXX/DONE` exists, so a
rerun of the same command resumes after the last finished generation and a larger `generation=`
extends a finished chain. Each generation's seeds derive from (seed, generation) alone, so a resumed
generation is the same as one run straight through. Under `accelerate launch` every process runs this same
loop; the steps only the main process takes (draw, score, write) go through `MainOnly`, which hands a failure of
theirs to every process at the next barrier.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from imgcollapse import faults
from imgcollapse.data import ImageSet, Splits
from imgcollapse.errors import TrainingDiverged, UserError
from imgcollapse.metric_facts import MEMBER_COLUMNS
from imgcollapse.metrics import Evaluation
from imgcollapse.models import CONDITIONS, Model
from imgcollapse.regimes import Regime
from imgcollapse.report.figures import grid_image, save_png
from imgcollapse.report.summary import summary_line
from imgcollapse.store import ENVIRONMENT_FILE, NULL_FILE, RunStore, atomic_write, atomic_write_dir

log = logging.getLogger(__name__)
T = TypeVar("T")


def barrier(processes: PartialState | None, failure: Exception | None = None) -> None:
    """Wait for every process of `accelerate launch`; a failure of the main process (`failure`) reaches the others,
    which stop with it instead of waiting at the next barrier for ever. Then the failure is raised here too."""
    if processes is not None and processes.num_processes > 1:
        message = broadcast_object_list([None if failure is None else f"{type(failure).__name__}: {failure}"])[0]
        if message is not None and not processes.is_main_process:
            raise UserError(f"the main process stopped ({message}); this process stops with it")
    if failure is not None:
        raise failure


def generation_seeds(seed: int, generation: int) -> dict[str, int]:
    """Independent 31-bit seeds for each random step of one generation, from (seed, generation) only."""
    # (the third word is unused: regimes seed themselves from (seed, generation); kept so seeds stay as they were)
    fit, sample, _, labels = np.random.SeedSequence([seed, generation]).generate_state(4) >> 1
    return {"fit": int(fit), "sample": int(sample), "labels": int(labels)}


def null_seeds(seed: int, generation: int) -> dict[str, int]:
    """Seeds of a generation's null draws (sampling, class labels), apart from its other seeds."""
    sample, labels = np.random.SeedSequence([seed, generation, 1]).generate_state(2) >> 1
    return {"sample": int(sample), "labels": int(labels)}


def null_set(generation: int, composition: dict[str, float], heldout: ImageSet, nulls: list[ImageSet | None],
             size: int, seed: int) -> ImageSet | None:
    """Memorization's null for a generation: draws from the distribution its training set came from that it never
    saw, in the training set's proportions: held-out real images for its real share, each earlier generation's
    null draws for that generation's share. None when an earlier generation has none (a run from before 0.3)."""
    if generation == 0:
        return heldout
    total = composition["num_real"] + composition["num_synthetic"]
    shares = {int(k[len("share_gen_"):]): v for k, v in composition.items() if k.startswith("share_gen_")}
    if not shares and composition["num_synthetic"]:  # one synthetic source: the last generation
        shares = {generation - 1: composition["num_synthetic"] / total}
    sources: list[tuple[ImageSet | None, float]] = [(heldout, composition["num_real"] / total)]
    sources += [(nulls[g], share) for g, share in sorted(shares.items())]
    if any(source is None for source, share in sources if share > 0):
        return None
    # as many as every source can supply in its share: a capped source would tilt the null's proportions
    size = min([size] + [int(len(source) / share) for source, share in sources if share > 0])
    rng = np.random.default_rng(np.random.SeedSequence([seed, generation, 2]))
    parts = []
    for source, share in sources:
        count = min(len(source), round(share * size)) if source is not None else 0
        if count:
            parts.append(source.subset(np.sort(rng.choice(len(source), count, replace=False))))
    return ImageSet.concat(parts) if parts else None


def strip_seed(seed: int) -> int:
    """The noise seed of the collapse strip: the same for every generation of a chain."""
    return int(np.random.SeedSequence([seed, 2**31 - 1]).generate_state(1)[0] >> 1)


def draw_labels(reference_labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """`n` class labels drawn with the frequencies of `reference_labels` (conditions for sampling)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.bincount(reference_labels).double()
    return torch.multinomial(counts / counts.sum(), n, replacement=True, generator=g)


def condition_labels(conditions: str, real: ImageSet, train_set: ImageSet, n: int, seed: int) -> torch.Tensor:
    """Labels to sample with: the real pool's class frequencies, uniform, or the training set's own."""
    if conditions == "real":
        return draw_labels(real.labels, n, seed)
    if conditions == "uniform":
        return draw_labels(torch.arange(real.num_classes), n, seed)
    if conditions == "train":  # class imbalance the generation learned from is passed on
        return draw_labels(train_set.labels, n, seed)
    raise ValueError(f"sampling.conditions={conditions!r} is not one of {CONDITIONS}")


def training_set(generation: int, real: ImageSet, synthetic: list[ImageSet], regime: Regime,
                 seed: int) -> tuple[ImageSet, dict[str, float]]:
    """Real data for generation 0, the regime's mix after that; with its composition."""
    if generation == 0:
        return regime.first_set(real, seed)
    return regime.training_set(real, synthetic, generation, seed)


def starting_point(model: Model, generation: int, store: RunStore) -> tuple[str, int | None]:
    """(`model.init`, the finished generation whose saved weights generation `generation` starts from, or None for
    new weights). Generation 0 always starts from scratch; a model without `init` always does."""
    init = getattr(getattr(model, "config", None), "init", "scratch")
    if generation == 0 or init == "scratch":
        return init, None
    if init == "base":
        return init, 0
    if init == "previous":
        return init, generation - 1
    raise ValueError(f"model.init={init!r} is not one of ['scratch', 'base', 'previous']")


def adopted_fit_stats(gen_dir: Path) -> dict[str, Any]:
    """What a fit reports of itself (loss, steps, `model_*`), as the generation whose model is adopted recorded it."""
    row = json.loads((Path(gen_dir) / "metrics.json").read_text())
    return {k: v for k, v in row.items() if k in ("train_loss", "train_steps") or k.startswith("model_")}



def score_members(score: Callable[[ImageSet, ImageSet], Any], samples: ImageSet, train_set: ImageSet
                  ) -> dict[str, Any]:
    """A population's members scored on their own blocks of the pooled samples (`<column>_<member>`); {} for one
    model."""
    out: dict[str, Any] = {}
    for label, start, stop in samples.members:
        row = score(samples.subset(np.arange(start, stop)), train_set).row
        out.update({f"{c}_{label}": row.get(c) for c in MEMBER_COLUMNS if c in row})
    return out


@dataclass
class Fitted:
    """A generation's fitted model, what its fit reported, and where its weights started."""

    model: Model
    stats: dict[str, Any]
    family: str | None  # chain.models / chain.population: the generation's family; None for `model` alone
    init: str  # model.init
    init_from: int | None  # the finished generation whose weights it started from; None for new weights


@dataclass
class Drawn:
    """What the main process draws from a generation's model: candidates for the next training set, the collapse
    strip's fixed-noise images, and memorization's null draws (None where no later generation needs them)."""

    samples: ImageSet
    strip: ImageSet
    null_draws: ImageSet | None


@dataclass
class Scored:
    """A generation's scores (of the raw candidates) and what curation keeps of them for the next generation."""

    evaluation: Evaluation
    member_scores: dict[str, Any]
    kept: ImageSet
    curation: dict[str, Any]


class MainOnly:
    """The steps only the main process takes under `accelerate launch`, written once: each step runs on the main
    process until one fails; `barrier` hands that failure to every process, so none waits for ever."""

    def __init__(self, processes: PartialState | None) -> None:
        self.processes = processes
        self.main = processes is None or processes.is_main_process
        self.failure: Exception | None = None

    def __call__(self, step: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """`step(*args, **kwargs)` on the main process; None on the others, or once a step has failed."""
        if not self.main or self.failure is not None:
            return None
        try:
            return step(*args, **kwargs)
        except Exception as e:  # raised at the barrier, once the other processes know
            self.failure = e
            return None

    def barrier(self) -> None:
        """Every process waits here; a main-process failure is raised on all of them."""
        failure, self.failure = self.failure, None
        barrier(self.processes, failure)


def fit(g: int, make: Callable[[], Model], family: str | None, train_set: ImageSet, store: RunStore, seed: int,
        adopted: Path | None = None) -> Fitted:
    """Fit generation g's model (every process: data-parallel under accelerate) from new weights or a finished
    generation's; or load `adopted`'s model, the same fit another chain made, with the numbers it recorded."""
    model = make()
    init, init_from = starting_point(model, g, store)
    try:
        if adopted is not None:
            model = type(model).load(adopted / "model", accelerator=getattr(model, "accelerator", None))
            return Fitted(model, adopted_fit_stats(adopted), family, init, init_from)
        start_at = {} if init_from is None else {"init_from": store.gen_dir(init_from) / "model"}
        return Fitted(model, model.fit(train_set, seed=seed, **start_at), family, init, init_from)
    except TrainingDiverged as e:  # nothing of this generation is on disk yet; earlier ones stay as they are
        e.generation = g
        raise


def draw(model: Model, g: int, seed: int, *, regime: Regime, real: ImageSet, train_set: ImageSet,
         num_null: int, conditions: str, strip_seeds: int,
         predict: Callable[[ImageSet], Any] | None) -> Drawn:
    """Sample the candidates (enough for curation to keep the regime's num_synthetic), the strip, and the null draws:
    no later generation trains on, curated as the samples are, so they come from the distribution it trains on."""
    seeds = generation_seeds(seed, g)
    # a conditional model samples from class labels (validate_data has checked they match the dataset's)
    conditional = bool(model.num_classes)

    def labels(n: int, label_seed: int) -> torch.Tensor | None:
        return condition_labels(conditions, real, train_set, n, label_seed) if conditional else None

    samples = model.sample(regime.num_candidates(), seed=seeds["sample"],
                           labels=labels(regime.num_candidates(), seeds["labels"]))
    strip_labels = torch.arange(strip_seeds) % model.num_classes if conditional else None
    strip = model.sample(strip_seeds, seed=strip_seed(seed), labels=strip_labels)
    null_draws = None
    if num_null:
        ns, count = null_seeds(seed, g), regime.num_candidates(num_null)
        null_draws = model.sample(count, seed=ns["sample"], labels=labels(count, ns["labels"]))
        probs = predict(null_draws) if predict is not None and count > num_null else None
        null_draws, _ = regime.curate(null_draws, probs, num_null)
    return Drawn(samples, strip, null_draws)


def score_and_curate(g: int, samples: ImageSet, *, score: Callable[..., Evaluation], regime: Regime,
                     splits: Splits, train_set: ImageSet, composition: dict[str, float],
                     nulls: list[ImageSet | None], num_null: int, seed: int) -> Scored:
    """Score the candidates (memorization against this generation's training set, with its null), then curate:
    the metrics describe the raw candidates, the next generation trains on what curation keeps. Unconditional
    samples carry the metrics classifier's predicted labels from here on (none without a classifier)."""
    null = null_set(g, composition, splits.heldout, nulls, num_null or len(splits.heldout), seed)
    if null is None and num_null:
        log.warning("gen %d: a generation it trains on was made before memorization had a null "
                    "(gen_XXX/%s, kit 0.3): its memorization_ratio stays empty", g, NULL_FILE)
    evaluation = score(samples, train_set, null=null)
    member_scores = score_members(score, samples, train_set)  # chain.population: each member's share
    if samples.labels is None and evaluation.probs is not None:
        samples.labels = torch.from_numpy(evaluation.probs.argmax(1)).long()
    samples.class_names = splits.train.class_names
    kept, curation = regime.curate(samples, evaluation.probs)
    return Scored(evaluation, member_scores, kept, curation)


def generation_row(g: int, fitted: Fitted, scored: Scored, train_set: ImageSet, composition: dict[str, float],
                   clock: list[float]) -> dict[str, Any]:
    """Generation g's row of metrics.csv: its scores, what the fit reported, where it started, what it trained on,
    what curation kept, and the time each phase took (`clock`: began, fitted, sampled, scored)."""
    began, fitted_at, sampled, scored_at = clock
    return {
        "generation": g,
        **({} if fitted.family is None else {"family": fitted.family}),
        **scored.evaluation.row,
        **scored.member_scores,
        "train_loss": fitted.stats.get("train_loss"),
        "train_steps": fitted.stats.get("train_steps"),
        **{k: v for k, v in fitted.stats.items() if k.startswith("model_")},  # what the fit reports of itself
        "init": fitted.init,
        "init_from": None if fitted.init_from is None else f"gen_{fitted.init_from:03d}",
        "num_train": len(train_set),
        **composition,
        **scored.curation,
        "seconds": None,  # to DONE: set by write_generation once every file but metrics.json is written
        "fit_seconds": fitted_at - began,
        "sample_seconds": sampled - fitted_at,
        "metrics_seconds": scored_at - sampled,
    }


def write_generation(gen_dir: Path, store: RunStore, model: Model, drawn: Drawn, kept: ImageSet,
                     row: dict[str, Any], grid_size: int, environment: dict[str, Any] | None, began: float) -> None:
    """Write everything generation `gen_dir` made, each file atomically, and DONE last (`began`: the generation's
    start, for its `seconds`)."""
    atomic_write_dir(gen_dir / "model", model.save)
    atomic_write(gen_dir / "samples.npz", kept.save)
    atomic_write(gen_dir / "strip.npz", drawn.strip.save)
    if drawn.null_draws is not None:
        atomic_write(gen_dir / NULL_FILE, drawn.null_draws.save)
    save_png(grid_image(drawn.samples.images[:grid_size], title=f"generation {row['generation']}"),
             gen_dir / "grid.png")
    row["seconds"] = time.perf_counter() - began
    store.write_json(gen_dir / "metrics.json", row)
    if environment is not None:
        store.write_json(gen_dir / ENVIRONMENT_FILE, environment)
    faults.reached("before_done")
    store.mark_done(row["generation"])


def run(
    *,
    store: RunStore,
    splits: Splits,
    make_model: Callable[[], Model],  # a fresh, untrained model of the configured kind
    regime: Regime,  # builds each training set, and keeps num_synthetic of each generation's samples
    score: Callable[..., Evaluation] | None,  # metrics of (samples, training set, null=) against held-out
    # data; None on the processes that only help train
    predict: Callable[[ImageSet], Any] | None = None,  # the metrics classifier's probabilities (null curation)
    num_null: int = 0,  # memorization's null draws each generation makes for the ones that train on its samples
    generation: int,  # the last generation to train
    seed: int,
    conditions: str = "real",  # class frequencies a conditional model samples with (CONDITIONS)
    grid_size: int = 64,
    strip_seeds: int = 8,
    environment: dict[str, Any] | None = None,  # versions and resolved settings, kept beside each generation
    after_generation: Callable[[int, dict[str, Any]], None] | None = None,  # report, trackers: once g is done
    processes: PartialState | None = None,  # every process of `accelerate launch` runs this loop; None: one
    family_for: Callable[[int], tuple[str, Callable[[], Model]]] | None = None,  # chain.models: (family name,
    # its make_model) for generation g; None: `make_model` every generation
    adopted_fit: Path | None = None,  # a gen_000 dir whose model generation 0 loads instead of fitting (a study's
    # arm that differs from its source only in curation: resume.adopt_generation0)
) -> list[dict[str, Any]]:
    """Train generations up to `generation`, after the last finished one (resume.prepare has cleaned the run dir
    of anything after it); returns all rows. Every process trains its share of each batch; the main process
    alone samples, scores and writes, and the others read its samples back from disk."""
    on_main = MainOnly(processes)
    start = store.num_done()
    if start > generation:
        if on_main.main:
            log.info("chain already has generations 0..%d in %s; nothing to do (raise generation= to extend)",
                     start - 1, store.root)
        return store.rows()
    if start and on_main.main:
        log.info("resuming %s after generation %d", store.root, start - 1)
    synthetic = [store.read_samples(g) for g in range(start)]
    nulls = [store.read_null(g) for g in range(start)] if on_main.main else []

    for g in range(start, generation + 1):
        clock = [time.perf_counter()]
        # Training set: the real pool at generation 0, the regime's mix of real data and earlier samples after.
        train_set, composition = training_set(g, splits.train, synthetic, regime, seed)
        # Fit (every process), from new weights, a finished generation's (model.init), or an adopted generation 0.
        family, make = family_for(g) if family_for is not None else (None, make_model)
        fitted = fit(g, make, family, train_set, store, generation_seeds(seed, g)["fit"],
                     adopted=adopted_fit if g == 0 else None)
        clock.append(time.perf_counter())
        # Sample (main).
        drawn = on_main(draw, fitted.model, g, seed, regime=regime, real=splits.train, train_set=train_set,
                        num_null=num_null, conditions=conditions, strip_seeds=strip_seeds, predict=predict)
        clock.append(time.perf_counter())
        # Score, then curate what the next generation trains on (main).
        scored = on_main(score_and_curate, g, drawn.samples if drawn else None, score=score, regime=regime,
                         splits=splits, train_set=train_set, composition=composition, nulls=nulls,
                         num_null=num_null, seed=seed)
        clock.append(time.perf_counter())
        # Write the generation, DONE last (main).
        row = on_main(generation_row, g, fitted, scored, train_set, composition, clock)
        on_main(write_generation, store.gen_dir(g), store, fitted.model, drawn, scored.kept if scored else None,
                row, grid_size, environment, clock[0])
        # Done: the other processes read the generation's samples from disk once the main one has written them.
        on_main.barrier()
        if not on_main.main:
            synthetic.append(store.read_samples(g))
            continue
        faults.reached("after_done")
        store.write_tables()
        synthetic.append(scored.kept)
        nulls.append(drawn.null_draws)
        log.info(summary_line(row, generation))
        if after_generation is not None:
            after_generation(g, row)
    return store.rows()
