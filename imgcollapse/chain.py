"""The generational loop. For each generation: build the training set, fit, sample, score, draw, mark done.

Everything a generation produces lands in `gen_XXX/` and counts only once `gen_XXX/DONE` exists, so a
rerun of the same command resumes after the last finished generation and a larger `generation=`
extends a finished chain. Each generation's seeds derive from (seed, generation) alone, so a resumed
generation is the same as one run straight through. Under `accelerate launch` every process runs this same
loop; the steps only the main process takes (sample, score, write) are marked inline.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from imgcollapse import faults
from imgcollapse.data import ImageSet, Splits
from imgcollapse.errors import TrainingDiverged, UserError
from imgcollapse.metrics import Evaluation
from imgcollapse.models import CONDITIONS, Model
from imgcollapse.regimes import Regime
from imgcollapse.report.figures import grid_image, save_png
from imgcollapse.report.metric_info import MEMBER_COLUMNS
from imgcollapse.report.summary import summary_line
from imgcollapse.store import ENVIRONMENT_FILE, NULL_FILE, RunStore, atomic_write, atomic_write_dir

log = logging.getLogger(__name__)


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
    for label, start, stop in getattr(samples, "members", ()):
        row = score(samples.subset(np.arange(start, stop)), train_set).row
        out.update({f"{c}_{label}": row.get(c) for c in MEMBER_COLUMNS if c in row})
    return out


def run(
    *,
    store: RunStore,
    splits: Splits,
    make_model: Callable[[], Model],  # a fresh, untrained model of the configured kind
    regime: Regime,
    score: Callable[..., Evaluation] | None,  # metrics of (samples, training set, null=) against held-out
    # data; None on the processes that only help train
    predict: Callable[[ImageSet], Any] | None = None,  # the metrics classifier's probabilities (null curation)
    num_null: int = 0,  # memorization's null draws each generation makes for the ones that train on its samples
    generation: int,  # the last generation to train
    seed: int,
    num_synthetic: int,  # samples each generation makes for the next
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
    main = processes is None or processes.is_main_process
    start = store.num_done()
    if start > generation:
        if main:
            log.info("chain already has generations 0..%d in %s; nothing to do (raise generation= to extend)",
                     start - 1, store.root)
        return store.rows()
    if start and main:
        log.info("resuming %s after generation %d", store.root, start - 1)
    synthetic = [store.read_samples(g) for g in range(start)]
    nulls = [store.read_null(g) for g in range(start)] if main else []
    # a conditional model samples from class labels (validate_data has checked they match the dataset's)
    num_classes = make_model().num_classes
    strip_labels = (torch.arange(strip_seeds) % num_classes) if num_classes else None

    for g in range(start, generation + 1):
        began = time.perf_counter()
        seeds = generation_seeds(seed, g)
        gen_dir = store.gen_dir(g)

        train_set, composition = training_set(g, splits.train, synthetic, regime, seed)

        # Fit (every process: data-parallel under accelerate): from new weights, or from a finished generation's.
        family, make = family_for(g) if family_for is not None else (None, make_model)
        model = make()
        init, init_from = starting_point(model, g, store)
        start_at = {} if init_from is None else {"init_from": store.gen_dir(init_from) / "model"}
        try:
            if g == 0 and adopted_fit is not None:  # the same fit another chain made: its weights and its numbers
                model = type(model).load(adopted_fit / "model", accelerator=getattr(model, "accelerator", None))
                fit_stats = adopted_fit_stats(adopted_fit)
            else:
                fit_stats = model.fit(train_set, seed=seeds["fit"], **start_at)
        except TrainingDiverged as e:  # nothing of this generation is on disk yet; earlier ones stay as they are
            e.generation = g
            raise
        fitted = time.perf_counter()

        failure = None
        if main:
            try:
                # Sample candidates for the next generation's data (enough for curation to keep num_synthetic).
                num_candidates = regime.num_candidates(num_synthetic)
                labels = condition_labels(conditions, splits.train, train_set, num_candidates, seeds["labels"]) \
                    if num_classes else None
                samples = model.sample(num_candidates, seed=seeds["sample"], labels=labels)
                strip = model.sample(strip_seeds, seed=strip_seed(seed), labels=strip_labels)
                # Null draws: what the next generations' memorization compares with (never trained on; curated as
                # the samples are, so they come from the distribution the next generation trains on).
                null_draws = None
                if num_null:
                    ns = null_seeds(seed, g)
                    count = regime.num_candidates(num_null)
                    null_labels = condition_labels(conditions, splits.train, train_set, count, ns["labels"]) \
                        if num_classes else None
                    null_draws = model.sample(count, seed=ns["sample"], labels=null_labels)
                    probs = predict(null_draws) if predict is not None and count > num_null else None
                    null_draws, _ = regime.curate(null_draws, probs, num_null)
                sampled = time.perf_counter()

                # Score (memorization against this generation's training set, with its null); unconditional samples
                # carry the classifier's predicted labels from here on (none without a classifier).
                null = null_set(g, composition, splits.heldout, nulls, num_null or len(splits.heldout), seed)
                if null is None and num_null:
                    log.warning("gen %d: a generation it trains on was made before memorization had a null "
                                "(gen_XXX/%s, kit 0.3): its memorization_ratio stays empty", g, NULL_FILE)
                evaluation = score(samples, train_set, null=null)
                member_scores = score_members(score, samples, train_set)  # chain.population: each member's share
                if samples.labels is None and evaluation.probs is not None:
                    samples.labels = torch.from_numpy(evaluation.probs.argmax(1)).long()
                samples.class_names = splits.train.class_names
                # Metrics describe the raw candidates; the next generation trains on what curation keeps.
                kept, curation = regime.curate(samples, evaluation.probs, num_synthetic)
                scored = time.perf_counter()

                # Write the generation, DONE last.
                atomic_write_dir(gen_dir / "model", model.save)
                atomic_write(gen_dir / "samples.npz", kept.save)
                atomic_write(gen_dir / "strip.npz", strip.save)
                if null_draws is not None:
                    atomic_write(gen_dir / NULL_FILE, null_draws.save)
                save_png(grid_image(samples.images[:grid_size], title=f"generation {g}"), gen_dir / "grid.png")
                row = {
                    "generation": g,
                    **({} if family is None else {"family": family}),
                    **evaluation.row,
                    **member_scores,
                    "train_loss": fit_stats.get("train_loss"),
                    "train_steps": fit_stats.get("train_steps"),
                    **{k: v for k, v in fit_stats.items() if k.startswith("model_")},  # what the fit reports of itself
                    "init": init,
                    "init_from": None if init_from is None else f"gen_{init_from:03d}",
                    "num_train": len(train_set),
                    **composition,
                    **curation,
                    "seconds": time.perf_counter() - began,
                    "fit_seconds": fitted - began,
                    "sample_seconds": sampled - fitted,
                    "metrics_seconds": scored - sampled,
                }
                store.write_json(gen_dir / "metrics.json", row)
                if environment is not None:
                    store.write_json(gen_dir / ENVIRONMENT_FILE, environment)
                faults.reached("before_done")
                store.mark_done(g)
            except Exception as e:  # raised below, once the other processes know
                failure = e

        # Done: the other processes read the generation's samples from disk once the main one has written them.
        barrier(processes, failure)
        if not main:
            synthetic.append(store.read_samples(g))
            continue
        faults.reached("after_done")
        store.write_tables()
        synthetic.append(kept)
        nulls.append(null_draws)
        log.info(summary_line(row, generation))
        if after_generation is not None:
            after_generation(g, row)
    return store.rows()
