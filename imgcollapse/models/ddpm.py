"""A small diffusion model from diffusers: UNet2DModel, DDPM training, DDIM/DPM-Solver++ sampling, EMA.

Optional class conditioning uses the UNet's `num_class_embeds` with one extra "null" class for
classifier-free guidance (conditions dropped with probability `class_dropout` during training).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.training_utils import compute_snr
from omegaconf import MISSING
from tqdm.auto import tqdm

from imgcollapse import faults
from imgcollapse.data import ImageSet, to_float, to_uint8
from imgcollapse.errors import require
from imgcollapse.models import SamplingConfig, noise, read_model_config, write_model_config
from imgcollapse.models.stacked import Fit, train_stacked
from imgcollapse.models.train import TrainingConfig, default_accelerator, train

SCHEDULERS = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}  # one per name in models.SAMPLERS
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # every scheduler in SCHEDULERS takes these
PREDICTION_TYPES = ("epsilon", "v_prediction")


def unet_downsampling(block_out_channels: list[int] | tuple[int, ...]) -> int:
    """How many times the UNet halves the image: the size must be divisible by 2 ** this."""
    return len(block_out_channels) - 1


def build_unet(
    image_shape: tuple[int, int, int],
    block_out_channels: list[int] | tuple[int, ...],
    layers_per_block: int,
    attention: bool,
    num_classes: int | None,
) -> UNet2DModel:
    """A UNet sized for the image; attention (if on) at the lowest resolution only, where it is cheap."""
    channels, size, _ = image_shape
    levels = len(block_out_channels)
    down = ["DownBlock2D"] * levels
    if attention:
        down[-1] = "AttnDownBlock2D"
    up = [b.replace("Down", "Up") for b in reversed(down)]
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=min(32, math.gcd(*block_out_channels)),
        attention_head_dim=min(block_out_channels[-1], 64) if attention else None,
        num_class_embeds=num_classes + 1 if num_classes else None,  # the last id is the null class
    )


class Noised(NamedTuple):
    """A training batch as the UNet sees it (DDPM._noised); `y` and `weight` are None where unused."""

    xt: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor | None
    target: torch.Tensor
    weight: torch.Tensor | None


@dataclass
class DDPMConfig(TrainingConfig):
    """`model=ddpm`: the UNet, its noise schedule and loss (values and their reasons: conf/model/ddpm.yaml)."""

    _target_: str = "imgcollapse.models.ddpm.DDPM"
    layers_per_block: int = MISSING
    attention: bool = MISSING
    num_classes: int | None = MISSING
    class_dropout: float = MISSING
    beta_schedule: str = MISSING
    num_train_timesteps: int = MISSING
    prediction_type: str = MISSING
    snr_gamma: float | None = MISSING
    compile: bool = MISSING

    def check(self) -> None:
        """The model's own keys (sizes that must fit the data are checked in config.validate)."""
        super().check()
        require(self.layers_per_block >= 1, "model.layers_per_block", self.layers_per_block, "an integer ≥ 1")
        require(self.prediction_type in PREDICTION_TYPES, "model.prediction_type", self.prediction_type,
                f"one of {list(PREDICTION_TYPES)}")
        require(self.snr_gamma is None or self.snr_gamma > 0, "model.snr_gamma", self.snr_gamma, "null or > 0")
        require(self.num_classes is None or self.num_classes > 1, "model.num_classes", self.num_classes,
                "null (unconditional) or the dataset's class count (> 1)")
        require(0 <= self.class_dropout < 1, "model.class_dropout", self.class_dropout, "a fraction in [0, 1)")
        require(self.beta_schedule in BETA_SCHEDULES, "model.beta_schedule", self.beta_schedule,
                f"one of {list(BETA_SCHEDULES)} (what diffusers' DDPM, DDIM and DPM-Solver schedulers all take)")
        require(self.num_train_timesteps >= 2, "model.num_train_timesteps", self.num_train_timesteps,
                "an integer ≥ 2")

    def check_chain(self, *, image_size: int, channels: int, sampling: SamplingConfig) -> None:
        """Its fit with the rest of the chain: the UNet's downsampling divides the image; enough timesteps."""
        self.check_image_size(image_size)
        self.check_sampling(sampling)

    def check_sampling(self, sampling: SamplingConfig) -> None:
        """Sampling keys that must fit this model."""
        require(sampling.steps <= self.num_train_timesteps, "sampling.steps", sampling.steps,
                f"at most model.num_train_timesteps={self.num_train_timesteps}")

    def check_image_size(self, image_size: int) -> None:
        """The UNet halves the image len(block_out_channels) - 1 times: the size must divide."""
        halvings = unet_downsampling(self.block_out_channels)
        require(image_size % 2**halvings == 0, "dataset.image_size", image_size,
                f"a multiple of {2**halvings}, since model.block_out_channels={list(self.block_out_channels)} "
                f"halves the image {halvings} times")


class DDPM:
    """Denoising diffusion model; `fit` trains from scratch for a fixed number of optimizer steps."""

    Config = DDPMConfig
    SAMPLING_KEYS = ("sampler", "steps", "guidance", "batch_size")

    def __init__(self, config: DDPMConfig, *, image_shape: tuple[int, int, int], sampling: SamplingConfig,
                 accelerator: Accelerator | None = None) -> None:
        self.config = config
        self.sampling = sampling
        self.accelerator = accelerator or default_accelerator()
        self.image_shape = tuple(int(v) for v in image_shape)
        self.num_classes = config.num_classes
        self.scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                       beta_schedule=config.beta_schedule, prediction_type=config.prediction_type)
        self.unet = self._build(seed=0)

    def _build(self, seed: int) -> UNet2DModel:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            c = self.config
            return build_unet(self.image_shape, c.block_out_channels, c.layers_per_block, c.attention,
                              self.num_classes)

    # Training -----------------------------------------------------------------------------------
    def _noised(self, x0: torch.Tensor, y: torch.Tensor | None, g: torch.Generator) -> Noised:
        """One batch's draws from `g`, in the order every fit makes them (noise, timesteps, dropped conditions),
        and what they ask of the network: the noised input, its target and the loss weights."""
        eps = torch.randn(x0.shape, generator=g, device=x0.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x0),), generator=g, device=x0.device)
        xt = self.scheduler.add_noise(x0, eps, t)
        if self.num_classes:
            drop = torch.rand(len(y), generator=g, device=y.device) < self.config.class_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        target = eps if self.config.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, eps, t)
        gamma, weight = self.config.snr_gamma, None
        if gamma:  # Min-SNR-gamma weighting (Hang et al. 2023): stop easy, low-noise steps dominating the loss.
            snr = compute_snr(self.scheduler, t)
            weight = snr.clamp(max=gamma) / (snr + 1 if self.config.prediction_type == "v_prediction" else snr)
        return Noised(xt, t, y if self.num_classes else None, target, weight)

    @staticmethod
    def _noised_loss(unet: Callable, batch: Noised) -> torch.Tensor:
        """The loss of `unet` (a module, or models.stacked's functional call) on a `_noised` batch."""
        pred = unet(batch.xt, batch.t, class_labels=batch.y).sample
        if batch.weight is None:
            return F.mse_loss(pred, batch.target)
        return (batch.weight * F.mse_loss(pred, batch.target, reduction="none").mean(dim=(1, 2, 3))).mean()

    def _loss(self, unet: torch.nn.Module, x0: torch.Tensor, y: torch.Tensor | None, g: torch.Generator):
        return self._noised_loss(unet, self._noised(x0, y, g))

    def _start(self, data: ImageSet, seed: int, init_from: Path | None) -> None:
        """The UNet a fit starts from: new weights seeded by `seed`, or those saved at `init_from`."""
        if self.num_classes and data.labels is None:
            raise ValueError("a class-conditional DDPM (model.num_classes set) needs labelled training data")
        if init_from is None:
            self.unet = self._build(seed)
        else:  # the weights on disk, so a resumed chain starts from the same bits as one run straight through
            self.unet = UNet2DModel.from_pretrained(Path(init_from) / "unet")

    def fit(self, data: ImageSet, seed: int, init_from: Path | None = None) -> dict[str, float]:
        """Train on `data`: a freshly initialised UNet, or (`init_from`: a saved model's directory) fine-tune its
        weights, for the budget `model.budget` sets (TrainingConfig.fit_budget)."""
        self._start(data, seed, init_from)
        c = self.config
        budget = c.fit_budget(len(data), finetune=init_from is not None)
        # torch.compile shares the UNet's parameters: what it trains is what `self.unet` samples with
        network = torch.compile(self.unet) if c.compile and budget.steps else self.unet
        result = train(
            network, self._loss, to_float(data.images), data.labels if self.num_classes else None,
            steps=budget.steps, batch_size=c.batch_size, lr=budget.lr, warmup_steps=budget.warmup_steps,
            ema_decay=c.ema_decay, grad_clip=c.grad_clip, seed=seed, accelerator=self.accelerator,
            desc="train ddpm",
        )
        return {"train_loss": result.loss, "train_seconds": result.seconds, "train_steps": result.steps}

    @staticmethod
    def fit_stacked(models: Sequence[DDPM], data: Sequence[ImageSet], seeds: Sequence[int],
                    init_from: Sequence[Path | None] | None = None) -> list[dict[str, float]]:
        """`fit` of K models of one config (K chains' generations) in lock-step in one process (models.stacked):
        each returns what its own `fit(data[k], seeds[k], init_from[k])` would, to float rounding. No
        torch.compile; every fit must spend the same steps."""
        init_from = list(init_from) if init_from is not None else [None] * len(models)
        if not len(models) == len(data) == len(seeds) == len(init_from):
            raise ValueError(f"fit_stacked: {len(models)} models, {len(data)} data sets, {len(seeds)} seeds and "
                             f"{len(init_from)} starting points: one of each per fit")
        if not models:
            return []
        first = models[0]
        accelerator = first.accelerator
        if accelerator.num_processes > 1 or accelerator.mixed_precision == "fp16":
            raise ValueError(f"fit_stacked runs in one process without fp16 (here {accelerator.num_processes} "
                             f"processes, mixed precision {accelerator.mixed_precision}): it has no gradient sync "
                             "and no loss scaling; use bf16 or fp32")
        if any(m.config != first.config or m.image_shape != first.image_shape for m in models):
            raise ValueError("fit_stacked: the models differ in config or image shape; stacked fits share both")
        budgets = [first.config.fit_budget(len(d), finetune=i is not None)
                   for d, i in zip(data, init_from, strict=True)]
        if any(b != budgets[0] for b in budgets):
            raise ValueError(f"fit_stacked: the fits' budgets differ ({sorted({b.steps for b in budgets})} steps): "
                             "stacked fits step together")
        fits = []
        for model, d, seed, init in zip(models, data, seeds, init_from, strict=True):
            model._start(d, seed, init)
            fits.append(Fit(model.unet, to_float(d.images), d.labels if first.num_classes else None, seed))
        c, budget = first.config, budgets[0]
        results = train_stacked(
            fits, first._noised, first._noised_loss, steps=budget.steps, batch_size=c.batch_size, lr=budget.lr,
            warmup_steps=budget.warmup_steps, ema_decay=c.ema_decay, grad_clip=c.grad_clip,
            device=accelerator.device, autocast=accelerator.autocast)
        return [{"train_loss": r.loss, "train_seconds": r.seconds, "train_steps": r.steps} for r in results]

    # Sampling -----------------------------------------------------------------------------------
    def _eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        w = self.sampling.guidance
        if y is None:
            return self.unet(x, t).sample
        if not w:
            return self.unet(x, t, class_labels=y).sample
        null = torch.full_like(y, self.num_classes)
        cond, uncond = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([y, null])).sample.chunk(2)
        return cond + w * (cond - uncond)  # w = 0: plain conditional; MAD's lambda = 1 / (1 + w)

    @torch.inference_mode()
    def sample(self, n: int, seed: int, labels: torch.Tensor | None = None) -> ImageSet:
        """Draw `n` images; image i depends only on (seed, i) and its label, not on the batch size."""
        if self.num_classes and labels is None:
            raise ValueError("a class-conditional DDPM needs `labels` to sample")
        device = self.accelerator.device
        self.unet.to(device).eval()
        s = self.sampling
        out = torch.empty((n, *self.image_shape), dtype=torch.uint8)
        bar = tqdm(total=n, desc="sample ddpm", disable=None, leave=False)
        for start in range(0, n, s.batch_size):
            stop = min(n, start + s.batch_size)
            scheduler = SCHEDULERS[s.sampler].from_config(self.scheduler.config)
            scheduler.set_timesteps(s.steps, device=device)
            x = noise(self.image_shape, seed, start, stop).to(device)
            y = labels[start:stop].to(device) if self.num_classes else None
            with self.accelerator.autocast():
                for t in scheduler.timesteps:
                    x = scheduler.step(self._eps(x, t, y), t, x).prev_sample
            out[start:stop] = to_uint8(x.float().clamp(-1, 1)).cpu()
            bar.update(stop - start)
            faults.reached("sample")
        bar.close()
        return ImageSet(out, labels.clone().long() if labels is not None else None)

    # Persistence --------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """A diffusers pipeline directory (`DDPMPipeline.from_pretrained(path)` loads it) plus our config."""
        path = Path(path)
        DDPMPipeline(unet=self.unet, scheduler=self.scheduler).save_pretrained(path)
        write_model_config(path, self.config, self.image_shape, self.sampling)

    @classmethod
    def load(cls, path: Path, accelerator: Accelerator | None = None) -> DDPM:
        """The model `save` wrote, with the sampling settings it was trained and sampled with."""
        path = Path(path)
        config, image_shape, sampling = read_model_config(path, cls.Config)
        model = cls(config, image_shape=image_shape, sampling=sampling, accelerator=accelerator)
        model.unet = UNet2DModel.from_pretrained(path / "unet")
        model.unet.eval()
        return model
