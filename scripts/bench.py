"""How fast imgcollapse is, against plain diffusers, and where a generation's time goes.

    python scripts/bench.py --out bench.json            # everything (about 30 min on 2 CPU cores)
    python scripts/bench.py --out bench.json --quick    # loops, samplers, optimizations but torch.compile, metrics
    python scripts/bench.py --studies-only --studies gmm,vae,ddpm   # `study=claims` per model: the budgets
    python scripts/bench.py --studies-from outputs/study/claims,model=gmm   # summarise finished studies, run nothing
    python scripts/bench.py --stacked 8 --device cuda --mixed-precision bf16   # 8 chains' fits in one vmapped loop

Loops are measured in one process with the same model config, batch and threads, in interleaved
repetitions (median and spread reported). Chains run as `python -m imgcollapse.run` subprocesses.
Prints a table and writes JSON with top-level `train_ratio`, `sampling_ratio`, `metrics_share`. Studies are
summarised from their files: wall time, the chains' compute in core-seconds, the share of core-time idle, FLOPs
per chain-generation and the achieved FLOP/s against this machine's fp32 matmul peak (probed in the same run).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDIMPipeline, DDPMScheduler
from torch.utils.flop_counter import FlopCounterMode

from imgcollapse.config import Config, build, compose, validate
from imgcollapse.data import ImageSet, to_float
from imgcollapse.metrics import MetricsConfig, evaluate, setup_metrics
from imgcollapse.metrics.calibration import calibrate
from imgcollapse.models import SamplingConfig
from imgcollapse.models.ddpm import DDPM, SCHEDULERS, DDPMConfig, build_unet
from imgcollapse.models.vae import VAENet
from imgcollapse.resume import SHARED_FILE
from imgcollapse.threads import available_cores

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")


def default_config(*overrides: str) -> Config:
    """The kit's default config (conf/), so the benchmark follows the defaults wherever they move."""
    return validate(compose(*overrides))


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "reps": len(values)}


# Training: the kit's loop vs a bare diffusers loop ------------------------------------------------------
def bare_train(m: DDPMConfig, data: torch.Tensor, steps: int, seed: int) -> float:
    """UNet2DModel + DDPMScheduler.add_noise + MSE + AdamW, nothing else: steps/s."""
    torch.manual_seed(seed)
    unet = build_unet(tuple(data.shape[1:]), m.block_out_channels, m.layers_per_block, m.attention, None)
    scheduler = DDPMScheduler(num_train_timesteps=m.num_train_timesteps, beta_schedule=m.beta_schedule)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=m.lr)
    batch = m.batch_size
    began = time.perf_counter()  # the loop alone, as the kit's train_seconds
    for _ in range(steps):
        x0 = data[torch.randint(len(data), (batch,))]
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,))
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - began)


def kit_train(m: DDPMConfig, sampling: SamplingConfig, pool: ImageSet, steps: int,
              seed: int) -> tuple[float, float, DDPM]:
    """The kit's DDPM.fit (accelerate, EMA, schedule, v-target, min-SNR, NaN guard): steps/s of its training
    loop, and the seconds `fit` spends around it (building the UNet, preparing, releasing)."""
    model = DDPM(dataclasses.replace(m, train_steps=steps), image_shape=pool.shape, sampling=sampling)
    began = time.perf_counter()
    loop_seconds = model.fit(pool, seed=seed)["train_seconds"]
    return steps / loop_seconds, time.perf_counter() - began - loop_seconds, model


def bench_training(m: DDPMConfig, sampling: SamplingConfig, pool: ImageSet, steps: int, reps: int) -> dict:
    data = to_float(pool.images)
    bare_train(m, data, 5, 0), kit_train(m, sampling, pool, 5, 0)  # warm up allocators and kernels
    bare, kit, overhead = [], [], []
    for rep in range(reps):
        bare.append(bare_train(m, data, steps, rep))
        speed, around, _ = kit_train(m, sampling, pool, steps, rep)
        kit.append(speed)
        overhead.append(around)
    ratio = statistics.median(kit) / statistics.median(bare)
    return {"steps": steps, "batch_size": m.batch_size, "bare_steps_per_s": spread(bare),
            "kit_steps_per_s": spread(kit), "ratio": ratio, "kit_fit_overhead_seconds": spread(overhead)}


def optimized_train(m: DDPMConfig, data: torch.Tensor, steps: int, variant: str) -> float:
    """The bare loop with one optimization: channels_last, bf16 autocast or torch.compile: steady steps/s."""
    torch.manual_seed(0)
    unet = build_unet(tuple(data.shape[1:]), m.block_out_channels, m.layers_per_block, m.attention, None)
    if variant == "channels_last":
        unet = unet.to(memory_format=torch.channels_last)
    network = torch.compile(unet) if variant == "compile" else unet
    scheduler = DDPMScheduler(num_train_timesteps=m.num_train_timesteps, beta_schedule=m.beta_schedule)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=m.lr)
    batch, warm = m.batch_size, 5
    for step in range(steps + warm):
        if step == warm:  # compile (and allocator warm-up) happen in the first steps: time the steady state
            began = time.perf_counter()
        x0 = data[torch.randint(len(data), (batch,))]
        if variant == "channels_last":
            x0 = x0.contiguous(memory_format=torch.channels_last)
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16"):
            out = network(scheduler.add_noise(x0, noise, t), t).sample
        loss = F.mse_loss(out.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - began)


OPTIMIZATIONS = ["plain", "channels_last", "bf16", "compile"]
QUICK_SKIPS = {"compile": "--quick: torch.compile's first compile and its steps take minutes on CPU (the full bench "
                          "times it)"}


def optimization_variants(quick: bool) -> tuple[list[str], list[dict[str, str]]]:
    """The training variants to time, and the ones left out with why: --quick leaves out torch.compile."""
    skipped = [{"variant": v, "reason": why} for v, why in QUICK_SKIPS.items()] if quick else []
    left_out = {sk["variant"] for sk in skipped}
    return [v for v in OPTIMIZATIONS if v not in left_out], skipped


def bench_optimizations(m: DDPMConfig, pool: ImageSet, steps: int, reps: int, quick: bool = False) -> dict:
    """Each optimization against the plain loop, interleaved (rotating order) so drift hits all alike."""
    data = to_float(pool.images)
    variants, skipped = optimization_variants(quick)
    out: dict = {"steps": steps, "skipped": skipped}
    if "compile" in variants:
        began = time.perf_counter()
        optimized_train(m, data, 1, "compile")  # the one-off compile, timed on its own
        out["compile_seconds"] = time.perf_counter() - began
    speeds: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(reps):
        turn = rep % len(variants)
        for v in variants[turn:] + variants[:turn]:
            speeds[v].append(optimized_train(m, data, steps, v))
    plain = statistics.median(speeds["plain"])
    return {**out, **{v: {"steps_per_s": spread(x), "speedup": statistics.median(x) / plain}
                      for v, x in speeds.items()}}


# Stacked fits: K chains' generations in one vmapped loop (models.stacked) -------------------------------
def bench_stacked(m: DDPMConfig, sampling: SamplingConfig, pool: ImageSet, fits: int, steps: int, reps: int,
                  accelerator: Accelerator) -> dict:
    """K separate `DDPM.fit`s against one `DDPM.fit_stacked` of K, interleaved: fit-steps per second each way,
    and the training part of a default chain's generations per hour that gives (on this device)."""
    m = dataclasses.replace(m, train_steps=steps, compile=False)
    subsets = [ImageSet(pool.images[k::fits], None) for k in range(fits)]  # one training set per chain

    def separate() -> float:
        models = [DDPM(m, image_shape=pool.shape, sampling=sampling, accelerator=accelerator) for _ in subsets]
        pairs = enumerate(zip(models, subsets, strict=True))
        return sum(model.fit(d, seed=k)["train_seconds"] for k, (model, d) in pairs)

    def stacked() -> float:
        models = [DDPM(m, image_shape=pool.shape, sampling=sampling, accelerator=accelerator) for _ in subsets]
        return DDPM.fit_stacked(models, subsets, list(range(fits)))[0]["train_seconds"]

    separate(), stacked()  # warm up allocators and kernels (and CUDA's lazy init)
    times: dict[str, list[float]] = {"separate": [], "stacked": []}
    for rep in range(reps):
        for name, run in (("separate", separate), ("stacked", stacked))[:: 1 if rep % 2 == 0 else -1]:
            times[name].append(fits * steps / run())
    median = {k: statistics.median(v) for k, v in times.items()}
    default = default_config().model
    return {"device": str(accelerator.device), "mixed_precision": accelerator.mixed_precision, "fits": fits,
            "steps": steps, "batch_size": m.batch_size,
            **{f"{k}_fit_steps_per_s": spread(v) for k, v in times.items()},
            "speedup": median["stacked"] / median["separate"],
            "generation0_fits_per_hour": {k: 3600 * v / default.train_steps for k, v in median.items()}}


# Sampling: the kit's sampler vs the diffusers pipeline ----------------------------------------------------
def bench_sampling(model: DDPM, num: int, reps: int) -> dict:
    c = model.sampling
    pipe = DDIMPipeline(unet=model.unet, scheduler=SCHEDULERS[c.sampler].from_config(model.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    batch = c.batch_size

    def run_pipeline() -> float:
        began = time.perf_counter()
        for start in range(0, num, batch):
            pipe(batch_size=min(batch, num - start), num_inference_steps=c.steps, output_type="np")
        return num / (time.perf_counter() - began)

    def run_kit() -> float:
        began = time.perf_counter()
        model.sample(num, seed=0)
        return num / (time.perf_counter() - began)

    run_pipeline(), run_kit()
    pipeline, kit = [], []
    for _ in range(reps):
        pipeline.append(run_pipeline())
        kit.append(run_kit())
    return {"images": num, "sampler": c.sampler, "steps": c.steps, "batch_size": batch,
            "pipeline_images_per_s": spread(pipeline), "kit_images_per_s": spread(kit),
            "ratio": statistics.median(kit) / statistics.median(pipeline)}


def bench_sampler_quality(cfg: Config, splits, cache_dir: Path, settings: list[tuple[str, int]]) -> list[dict]:
    """FID of one default-trained model under each (sampler, steps) setting, with its sampling speed."""
    model = DDPM(cfg.model, image_shape=splits.train.shape, sampling=cfg.sampling)
    model.fit(splits.train, seed=0)
    metrics = setup_metrics(splits, cache_dir, metric_config(cfg), seed=0)
    out = []
    for sampler, steps in settings:
        model.sampling = dataclasses.replace(cfg.sampling, sampler=sampler, steps=steps)
        began = time.perf_counter()
        samples = model.sample(cfg.num_synthetic, seed=1)
        seconds = time.perf_counter() - began
        row = evaluate(samples, splits.train, metrics).row
        out.append({"sampler": sampler, "steps": steps, "fid": row["fid"], "recall": row["recall"],
                    "images_per_s": cfg.num_synthetic / seconds})
    return out


# Metrics -------------------------------------------------------------------------------------------------
def metric_config(cfg: Config) -> MetricsConfig:
    """The default metrics on the classifier's features (Inception costs minutes a generation on CPU)."""
    return dataclasses.replace(cfg.metrics, extractors=["classifier"])


def bench_metrics(cfg, splits, samples: ImageSet, cache_dir: Path, sizes: list[int]) -> dict:
    """Seconds per generation for features and each score at the default sample count, and against size."""
    def once(images: ImageSet) -> tuple[float, dict]:
        metrics = setup_metrics(splits, cache_dir, metric_config(cfg), seed=0, num_scored=len(images))
        began = time.perf_counter()
        evaluation = evaluate(images, splits.train, metrics, null=splits.heldout)  # memorization with its null
        return time.perf_counter() - began, evaluation.seconds

    default_n = cfg.num_synthetic
    total, parts = once(samples.subset(np.arange(default_n)))
    by_size = {str(n): once(samples.subset(np.arange(n)))[0] for n in sizes if n <= len(samples)}
    return {"num_samples": default_n, "seconds": total, "parts": parts, "seconds_by_num_samples": by_size}


def bench_calibration(cfg, splits, cache_dir: Path) -> dict:
    """Wall seconds of the calibration on the default data (the cached classifier and references reused)."""
    metrics = setup_metrics(splits, cache_dir, metric_config(cfg), seed=0, num_scored=cfg.num_synthetic)
    began = time.perf_counter()
    result = calibrate(splits, metrics)
    return {"seconds": time.perf_counter() - began, "size": result["size"], "sees": result["sees"]}


# Whole chains --------------------------------------------------------------------------------------------
def run_chain(run_dir: Path, *overrides: str) -> dict:
    """`python -m imgcollapse.run` as a user runs it: wall time, per-generation seconds, peak RSS."""
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "imgcollapse.run", f"hydra.run.dir={run_dir}", *overrides],
                            cwd=run_dir.parent, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if result.returncode:
        raise RuntimeError(f"chain {overrides} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    return {
        "overrides": list(overrides), "wall_seconds": wall, "peak_rss_gib": peak_kib / 2**20,
        "per_generation": [{k: r.get(k) for k in ("generation", "seconds", "fit_seconds", "sample_seconds",
                                                   "metrics_seconds", "fid", "num_train")} for r in rows],
    }


# Studies -----------------------------------------------------------------------------------------------------
def study_times(root: Path) -> dict:
    """Per arm: the seconds its chains computed (adopted generations 0 not counted), and what sharing saved."""
    with (root / "study.csv").open() as f:
        rows = list(csv.DictReader(f))
    per_arm: dict[str, float] = {}
    saved = 0.0
    for r in rows:
        seconds = float(r["seconds"] or 0)
        if r["shared_gen0"] == "True":
            saved += seconds  # the source's generation 0, which this chain would have trained again
        else:
            per_arm[r["arm"]] = per_arm.get(r["arm"], 0.0) + seconds
    computed = sum(per_arm.values())
    return {"compute_seconds_by_arm": per_arm, "compute_seconds": computed, "shared_gen0_saved_seconds": saved,
            "shared_gen0_saved_share": saved / (computed + saved) if computed + saved else 0.0}


def matmul_gflops(n: int, reps: int, threads: int) -> float:
    """fp32 GFLOP/s of the best of `reps` n×n matmuls on `threads` torch threads (2n³ FLOPs a product)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm up the BLAS threads
        best = math.inf
        for _ in range(reps):
            began = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - began)
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / best / 1e9


def matmul_peak(n: int = 1024, reps: int = 10) -> dict:
    """This machine's fp32 peak as torch reaches it: matmuls over every core, and on one thread. A core's peak is
    the larger of the two per core (on 2 vCPUs one 2-thread 1024² matmul gained nothing over one thread)."""
    threads = available_cores()
    every = matmul_gflops(n, reps, threads)
    one = matmul_gflops(n, reps, 1) if threads > 1 else every
    return {"n": n, "reps": reps, "threads": threads, "gflops": every, "gflops_one_thread": one,
            "peak_gflops_per_core": max(every / threads, one), "platform": platform.platform()}


@dataclasses.dataclass(frozen=True)
class PerImage:
    """A model's forward FLOPs per image: one training forward pass, and one network evaluation while sampling
    (`sample_evals` of them make a sample: the sampler's steps for a DDPM, one decode for a VAE)."""

    train: float
    sample: float
    sample_evals: int


def forward_flops(forward) -> int:
    """FLOPs torch's FlopCounterMode counts in `forward()` (matmuls and convolutions; norms and activations are
    not counted)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        forward()
    return counter.get_total_flops()


_PER_IMAGE: dict[str, tuple[PerImage | None, str | None]] = {}


def per_image_flops(model: dict, sampling: dict, image_shape: tuple[int, ...]) -> tuple[PerImage | None, str | None]:
    """(PerImage, None) for a model config of run.json's `config.model` kind, counted on one image of `image_shape`;
    (None, why) for a model with no torch module to count."""
    key = json.dumps([model, sampling, list(image_shape)], sort_keys=True, default=str)
    if key in _PER_IMAGE:
        return _PER_IMAGE[key]
    kind = str(model.get("_target_", "?")).rsplit(".", 1)[-1]
    shape = tuple(int(v) for v in image_shape)
    x = torch.zeros(1, *shape)
    if kind == "DDPM":
        classes = model.get("num_classes")
        unet = build_unet(shape, model["block_out_channels"], model["layers_per_block"], model["attention"], classes)
        y = torch.zeros(1, dtype=torch.long) if classes else None
        f = forward_flops(lambda: unet(x, torch.zeros(1, dtype=torch.long), class_labels=y))
        guided = 2 if classes and sampling.get("guidance") else 1  # guidance runs the conditional and null batch
        out: tuple[PerImage | None, str | None] = (PerImage(f, f * guided, int(sampling["steps"])), None)
    elif kind == "VAE":
        net = VAENet(shape, model["block_out_channels"], model["latent_dim"])
        z = torch.zeros(1, model["latent_dim"])
        out = (PerImage(forward_flops(lambda: net(x, z)), forward_flops(lambda: net.decode(z)), 1), None)
    else:
        out = (None, f"{kind}: no torch module to count (scikit-learn's EM on numpy)" if kind == "GMM"
               else f"{kind}: no FLOP count for this model")
    _PER_IMAGE[key] = out
    return out


def generation_flops(per: PerImage, *, batch_size: int, train_steps: int, images: float) -> dict[str, float]:
    """A generation's FLOPs: training 3 forward passes' worth (forward + backward) per image of every batch, and
    sampling one network evaluation per image per sampler step."""
    train = 3 * per.train * batch_size * train_steps
    sample = per.sample * per.sample_evals * images
    return {"train": train, "sample": sample, "total": train + sample}


def num(value) -> float | None:
    """A metrics.csv cell as a number (None when empty)."""
    return None if value in (None, "", "None") else float(value)


def images_sampled(config: dict, num_heldout: int) -> int:
    """Images a generation's model draws (chain.draw): the candidates (more than num_synthetic under curation), the
    collapse strip, and memorization's null draws (metrics.num_null, default the held-out split's size)."""
    regime = config.get("regime", {})

    def candidates(n: int) -> int:
        return n if regime.get("curation", "none") == "none" else math.ceil(n / regime["keep_fraction"])

    null = config.get("metrics", {}).get("num_null") or num_heldout
    return candidates(config["num_synthetic"]) + config["report"]["strip_seeds"] + candidates(null)


def row_flops(row: dict, config: dict, image_shape: tuple[int, ...], num_heldout: int,
              trained: bool = True) -> tuple[dict[str, float] | None, str | None]:
    """One metrics.csv row's FLOPs ({train, sample, total}) or (None, why). The row's `family` picks the model
    (chain.models; `population`: every member trains on the set and samples its equal share); its `train_steps`
    the steps taken. `trained`: False for a generation 0 whose model was adopted, not trained here."""
    family = row.get("family") or None
    families = config.get("families") or {}
    population = (config.get("chain") or {}).get("population")
    if family == "population" and population:
        members = [families.get(m, config["model"]) for m in population]
    else:
        members = [families.get(family, config["model"]) if family else config["model"]]
    images = images_sampled(config, num_heldout)
    total = {"train": 0.0, "sample": 0.0, "total": 0.0}
    for model in members:
        per, why = per_image_flops(model, config.get("sampling", {}), image_shape)
        if per is None:
            return None, why
        steps = num(row.get("train_steps")) if len(members) == 1 else None
        if steps is None and model.get("budget", "steps") == "steps":
            steps = model.get("train_steps")  # a population row records no steps: each member's fixed budget
        if steps is None:
            return None, "no train_steps recorded"
        flops = generation_flops(per, batch_size=model["batch_size"], train_steps=int(steps) if trained else 0,
                                 images=images / len(members))
        total = {k: total[k] + flops[k] for k in total}
    return total, None


def chain_summary(run_dir: Path, study_threads: int | None = None) -> dict | None:
    """One chain's generations computed here (a generation 0 copied from another chain is not), their seconds, its
    torch threads (run.json's, else the study's, else 1), core-seconds (seconds × threads) and FLOPs; None when it
    has no metrics.csv."""
    if not (run_dir / "metrics.csv").exists():
        return None
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    config, dataset = run.get("config", {}), run.get("dataset", {})
    shared = json.loads((run_dir / SHARED_FILE).read_text()) if (run_dir / SHARED_FILE).exists() else {}
    threads = config.get("threads") or study_threads
    seconds, counted_seconds, flops, counted, generations = 0.0, 0.0, 0.0, 0, 0
    uncounted: dict[str, int] = {}
    for row in rows:
        adopted = shared.get("generation") == int(row["generation"])
        if adopted and shared.get("shared") == "files":
            continue  # the source chain computed it
        generations += 1
        s = num(row["seconds"]) or 0.0
        seconds += s
        if not config or "image_shape" not in dataset:
            got, why = None, "no run.json config"
        else:
            got, why = row_flops(row, config, tuple(dataset["image_shape"]), dataset.get("num_heldout", 0),
                                 trained=not adopted)
        if got is None:
            uncounted[why] = uncounted.get(why, 0) + 1
        else:
            counted += 1
            flops += got["total"]
            counted_seconds += s
    return {"run_dir": str(run_dir), "threads": threads, "generations": generations, "seconds": seconds,
            "core_seconds": seconds * (threads or 1), "flops": flops, "generations_counted": counted,
            "counted_core_seconds": counted_seconds * (threads or 1), "uncounted": uncounted}


def study_cores(record: dict, machine: dict) -> int:
    """The cores a study's chains could use: joblib's n_jobs × each chain's threads (the basic launcher: its threads),
    else the machine's CPU count (a cluster's jobs: each its own cores, so the idle share means little there)."""
    launcher, threads = record.get("launcher") or [], record.get("threads")
    if threads and launcher and launcher[0] == "hydra/launcher=basic":
        return int(threads)
    n_jobs = next((a.split("=", 1)[1] for a in launcher if a.startswith("hydra.launcher.n_jobs=")), None)
    if threads and n_jobs and n_jobs.isdigit():
        return int(n_jobs) * int(threads)
    return machine.get("cpus") or available_cores()


def summarize_study(root: Path, probe: dict | None = None, wall_seconds: float | None = None) -> dict:
    """A finished study dir, from its files alone (nothing reruns): wall seconds (`wall_seconds`, else its runs'
    seconds in study.json), the chains' compute in core-seconds, the share of core-time left idle, FLOPs per
    chain-generation, and FLOP/s per core against a core's peak in `probe` (matmul_peak)."""
    record = json.loads((root / "study.json").read_text())
    wall = wall_seconds if wall_seconds is not None else sum(r["seconds"] for r in record.get("runs", []))
    chains = [chain_summary(root / c["run_dir"], record.get("threads")) for c in record.get("chains", [])]
    missing = sum(c is None for c in chains)
    chains = [c for c in chains if c is not None]
    machine = {}
    for c in chains:  # the machine the study ran on, as its first chain recorded it
        run_json = Path(c["run_dir"]) / "run.json"
        if run_json.exists():
            machine = json.loads(run_json.read_text()).get("invocation", {}).get("machine", {})
            break
    cores = study_cores(record, machine)
    out = {"dir": str(root), "wall_seconds": wall, "cores": cores, "machine": machine,
           # the probe runs here and now: a ratio to it means something only on the machine the study ran on
           "probe_same_machine": (machine.get("platform") == probe.get("platform") and cores == probe.get("threads")
                                  if machine and probe else None),
           "threads": record.get("threads"), "chains": len(chains), "chains_missing": missing,
           "generations": sum(c["generations"] for c in chains), **account(chains, wall, cores, probe),
           "per_chain": chains}
    if (root / "study.csv").exists():
        out.update(study_times(root))
    if (root / "claims.json").exists():
        claims = json.loads((root / "claims.json").read_text())["claims"]
        out["verdicts"] = {name: c["verdict"] for name, c in claims.items()}
        out["tests"] = {name: {g["name"]: g["verdict"] for g in c["groups"]} for name, c in claims.items()}
    return out


def account(chains: list[dict], wall: float, cores: int, probe: dict | None) -> dict:
    """The study's sums over its chains: compute core-seconds, idle share 1 - compute / (wall × cores), FLOPs per
    counted chain-generation, achieved FLOP/s per core (counted FLOPs / their core-seconds) and its ratio to a
    core's peak in `probe`."""
    compute = sum(c["core_seconds"] for c in chains)
    counted = sum(c["generations_counted"] for c in chains)
    flops = sum(c["flops"] for c in chains)
    counted_core_seconds = sum(c["counted_core_seconds"] for c in chains)
    uncounted: dict[str, int] = {}
    for c in chains:
        for why, n in c["uncounted"].items():
            uncounted[why] = uncounted.get(why, 0) + n
    achieved = flops / counted_core_seconds / 1e9 if counted and counted_core_seconds else None
    return {
        "compute_core_seconds": compute,
        "idle_share": 1 - compute / (wall * cores) if wall else None,
        "flops_total": flops if counted else None,
        "flops_per_chain_generation": flops / counted if counted else None,
        "generations_flops_counted": counted, "generations_flops_uncounted": uncounted,
        "achieved_gflops_per_core": achieved,
        "probe_gflops": probe["gflops"] if probe else None,
        "peak_share": achieved / probe["peak_gflops_per_core"] if achieved is not None and probe else None,
    }


def bench_study(root: Path, *overrides: str, probe: dict | None = None) -> dict:
    """`python -m imgcollapse.study OVERRIDES` as a user runs it, into a fresh dir: wall time, then summarize_study
    (per-arm compute, the time shared generations 0 saved, idle cores, FLOPs, verdicts)."""
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "imgcollapse.study", *overrides, f"study.dir={root}"],
                            capture_output=True, text=True)
    wall = time.perf_counter() - began
    if result.returncode:
        raise RuntimeError(f"study {overrides} failed:\n{result.stderr[-3000:]}")
    return {"overrides": list(overrides), **summarize_study(root, probe, wall_seconds=wall)}


def table_studies(results: dict) -> str:
    """The studies as a markdown table, then each study's verdicts."""
    def fmt(value, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    probe = results.get("probe") or {}
    lines = [f"fp32 matmul probe ({probe.get('n', '?')}², best of {probe.get('reps', '?')}): "
             f"{fmt(probe.get('gflops'), '.1f')} GFLOP/s on {probe.get('threads', '?')} threads, "
             f"{fmt(probe.get('gflops_one_thread'), '.1f')} on one; a core's peak "
             f"{fmt(probe.get('peak_gflops_per_core'), '.1f')} GFLOP/s (the 'of peak' column's denominator)", "",
             "| study | wall min | cores | chains | compute core-min | idle share | GFLOP / chain-gen (counted) "
             "| GFLOP/s a core | of peak | gen 0 shared saved |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, st in results["studies"].items():
        per_gen = st["flops_per_chain_generation"]
        counted = f"{st['generations_flops_counted']}/{st['generations']}"
        lines.append(
            f"| {name} | {st['wall_seconds'] / 60:.1f} | {st['cores']} | {st['chains']} "
            f"| {st['compute_core_seconds'] / 60:.1f} | {fmt(st['idle_share'], '.0%')} "
            f"| {fmt(per_gen / 1e9 if per_gen is not None else None, '.1f')} ({counted}) "
            f"| {fmt(st['achieved_gflops_per_core'], '.2f')} | {fmt(st['peak_share'], '.1%')} "
            f"| {fmt(st.get('shared_gen0_saved_share'), '.0%')} |")
    for name, st in results["studies"].items():
        if st.get("probe_same_machine") is False:
            lines.append(f"\n{name}: ran on another machine than the probe ({st['machine'].get('platform')}, "
                         f"{st['cores']} cores): its 'of peak' compares different machines")
        for why, n in st["generations_flops_uncounted"].items():
            lines.append(f"\n{name}: {n} generations without a FLOP count ({why})")
        if st.get("verdicts"):
            lines.append(f"\n{name} verdicts:")
            lines += [f"  {claim}: {verdict}" for claim, verdict in st["verdicts"].items()]
    return "\n".join(lines)


def table(results: dict) -> str:
    lines = [f"{'what':<46} {'value':>14}"]

    def add(name: str, value: str) -> None:
        lines.append(f"{name:<46} {value:>14}")

    t, s = results["training"], results["sampling"]
    add(f"train steps/s, bare diffusers (batch {t['batch_size']})", f"{t['bare_steps_per_s']['median']:.2f}")
    add("train steps/s, kit", f"{t['kit_steps_per_s']['median']:.2f}")
    add("train_ratio (kit / bare)", f"{results['train_ratio']:.3f}")
    add("kit fit seconds around its loop (once a generation)", f"{t['kit_fit_overhead_seconds']['median']:.2f}")
    add(f"sample images/s, diffusers pipeline ({s['sampler']}-{s['steps']})",
        f"{s['pipeline_images_per_s']['median']:.1f}")
    add("sample images/s, kit", f"{s['kit_images_per_s']['median']:.1f}")
    add("sampling_ratio (kit / pipeline)", f"{results['sampling_ratio']:.3f}")
    m = results["metrics"]
    add(f"metrics s/generation ({m['num_samples']} samples)", f"{m['seconds']:.2f}")
    for n, sec in m["seconds_by_num_samples"].items():
        add(f"  metrics s at num_samples={n}", f"{sec:.2f}")
    add("metrics_share (of a generation)", f"{results['metrics_share']:.3f}")
    if "metrics_share_in_chain" in results:
        add("metrics_share in the default chain (max)", f"{results['metrics_share_in_chain']:.3f}")
    if "calibration" in results:
        add(f"calibration seconds (n = {results['calibration']['size']})", f"{results['calibration']['seconds']:.1f}")
    for name, chain in results.get("chains", {}).items():
        gens = chain["per_generation"]
        add(f"chain {name}: wall minutes", f"{chain['wall_seconds'] / 60:.1f}")
        add(f"chain {name}: s/generation (median)", f"{statistics.median(g['seconds'] for g in gens):.1f}")
        add(f"chain {name}: peak RSS GiB", f"{chain['peak_rss_gib']:.2f}")
    if "optimizations" in results:
        o = results["optimizations"]
        for v in ("channels_last", "bf16", "compile"):
            if v in o:
                add(f"training speed-up from {v}", f"{o[v]['speedup']:.2f}x")
        if "compile_seconds" in o:
            add("torch.compile one-off compile seconds", f"{o['compile_seconds']:.0f}")
        for sk in o.get("skipped", []):
            add(f"training speed-up from {sk['variant']}", "skipped")
    for q in results.get("sampler_quality", []):
        add(f"FID with {q['sampler']}-{q['steps']} ({q['images_per_s']:.0f} images/s)", f"{q['fid']:.1f}")
    if "accumulate_replace_ratio" in results:
        add("accumulate / replace s at the last generation", f"{results['accumulate_replace_ratio']:.3f}")
        add("accumulate / replace s/generation (medians)", f"{results['accumulate_replace_ratio_median']:.3f}")
    if results.get("studies"):
        lines += ["", table_studies(results)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions of each loop")
    parser.add_argument("--train-steps", type=int, default=60, help="steps per training repetition")
    parser.add_argument("--sample-images", type=int, default=512, help="images per sampling repetition")
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes: skip the whole-chain runs, the sampler FIDs and the torch.compile "
                             "variant of the optimizations (its compile takes minutes on CPU; JSON: "
                             "optimizations.skipped)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the chains' run directories here (figures, metrics) instead of a temp dir")
    parser.add_argument("--studies", default="",
                        help="comma-separated models whose `study=claims` to time, e.g. gmm,vae,ddpm (DDPM: ~1 h)")
    parser.add_argument("--studies-only", action="store_true", help="time the --studies and nothing else")
    parser.add_argument("--studies-from", type=Path, nargs="+", default=None, metavar="DIR",
                        help="summarise finished study dirs from their files (wall, core-seconds, idle share, FLOPs "
                             "against a matmul probe) and nothing else: no study reruns")
    parser.add_argument("--stacked", type=int, default=None, metavar="K",
                        help="time K separate DDPM fits against one stacked fit of K (models.stacked) and nothing "
                             "else; with --device and --mixed-precision")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="--stacked's device")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                        help="--stacked's autocast (accelerate; stacked fits have no fp16 loss scaling)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stacked:
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here")
        cfg = default_config()
        accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=args.mixed_precision)
        results = {"machine": {"platform": platform.platform(), "cores": available_cores(),
                               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                               "cuda": torch.cuda.get_device_name() if args.device == "cuda" else None},
                   "stacked": bench_stacked(cfg.model, cfg.sampling, build(cfg.dataset).train, args.stacked,
                                            args.train_steps, args.reps, accelerator)}
        args.out.write_text(json.dumps(results, indent=1))
        r = results["stacked"]
        print(f"{r['fits']} fits of {r['steps']} steps on {r['device']} ({r['mixed_precision']}): separate "
              f"{r['separate_fit_steps_per_s']['median']:.1f} fit-steps/s, stacked "
              f"{r['stacked_fit_steps_per_s']['median']:.1f} ({r['speedup']:.2f}x)")
        return
    if args.studies_only or args.studies_from:
        probe = matmul_peak()
        results = {"machine": {"platform": platform.platform(), "cores": available_cores(),
                               "torch": torch.__version__}, "probe": probe, "studies": {}}
        for root in args.studies_from or []:
            results["studies"][root.resolve().name] = summarize_study(root.resolve(), probe)
        with tempfile.TemporaryDirectory() as tmp:
            root = args.keep.resolve() if args.keep else Path(tmp)
            for model in filter(None, args.studies.split(",")) if args.studies_only else []:
                print(f"study=claims model={model} ...", file=sys.stderr)
                results["studies"][model] = bench_study(root / f"claims-{model}", "study=claims", f"model={model}",
                                                        probe=probe)
        args.out.write_text(json.dumps(results, indent=2, default=str))
        print(table_studies(results))
        return

    cfg = default_config()
    splits = build(cfg.dataset)
    results: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "model": dataclasses.asdict(cfg.model), "sampling": dataclasses.asdict(cfg.sampling),
    }

    print("training loops ...", file=sys.stderr)
    results["training"] = bench_training(cfg.model, cfg.sampling, splits.train, args.train_steps, args.reps)
    results["train_ratio"] = results["training"]["ratio"]

    print("samplers ...", file=sys.stderr)
    _, _, model = kit_train(cfg.model, cfg.sampling, splits.train, args.train_steps, 0)
    results["sampling"] = bench_sampling(model, args.sample_images, args.reps)
    results["sampling_ratio"] = results["sampling"]["ratio"]

    print("optimizations ...", file=sys.stderr)
    results["optimizations"] = bench_optimizations(cfg.model, splits.train, args.train_steps * 2, args.reps,
                                                   quick=args.quick)

    print("metrics ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        samples = model.sample(4000, seed=1)
        cache = Path(os.environ.get("IMGCOLLAPSE_CACHE", Path(tmp) / "cache")).expanduser()
        results["metrics"] = bench_metrics(cfg, splits, samples, cache, [1000, 2000, 4000])
        print("calibration ...", file=sys.stderr)
        results["calibration"] = bench_calibration(cfg, splits, cache)

        # A generation's time: measured in the default chain when it runs, else estimated from the loops.
        steps_per_s = results["training"]["kit_steps_per_s"]["median"]
        images_per_s = results["sampling"]["kit_images_per_s"]["median"]
        generation_seconds = (cfg.model.train_steps / steps_per_s
                              + (cfg.num_synthetic + cfg.report.strip_seeds) / images_per_s
                              + results["metrics"]["seconds"])
        if not args.quick:
            print("FID against sampler and steps ...", file=sys.stderr)
            results["sampler_quality"] = bench_sampler_quality(
                cfg, splits, cache, [("ddim", 10), ("ddim", 25), ("ddim", 50), ("dpm++", 10),
                                                   ("dpm++", 20)])
            print("default chain (replace) and accumulate chain ...", file=sys.stderr)
            chain_root = args.keep.resolve() if args.keep else Path(tmp)
            chain_root.mkdir(parents=True, exist_ok=True)
            chains = {
                "default": run_chain(chain_root / "default"),
                "accumulate": run_chain(chain_root / "accumulate", "regime=accumulate"),
            }
            results["chains"] = chains
            generation_seconds = statistics.median(g["seconds"] for g in chains["default"]["per_generation"])
            last = {name: c["per_generation"][-1]["seconds"] for name, c in chains.items()}
            results["accumulate_replace_ratio"] = last["accumulate"] / last["default"]
            # one generation's seconds are noisy (±10% between runs); the median over all of them is steadier
            median = {name: statistics.median(g["seconds"] for g in c["per_generation"]) for name, c in chains.items()}
            results["accumulate_replace_ratio_median"] = median["accumulate"] / median["default"]
            results["metrics_share_in_chain"] = max(g["metrics_seconds"] / g["seconds"]
                                                    for g in chains["default"]["per_generation"])
        results["generation_seconds"] = generation_seconds
        results["metrics_share"] = results["metrics"]["seconds"] / generation_seconds
        for model in filter(None, args.studies.split(",")):
            print(f"study=claims model={model} ...", file=sys.stderr)
            study_root = args.keep.resolve() if args.keep else Path(tmp)
            if "probe" not in results:
                results["probe"] = matmul_peak()
            results.setdefault("studies", {})[model] = bench_study(study_root / f"claims-{model}", "study=claims",
                                                                   f"model={model}", probe=results["probe"])

    args.out.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
