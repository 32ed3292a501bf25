"""A small diffusion model from diffusers: UNet2DModel, DDPM training, DDIM/DPM-Solver++ sampling, EMA.

Optional class conditioning uses the UNet's `num_class_embeds` with one extra "null" class for
classifier-free guidance (conditions dropped with probability `class_dropout` during training).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.training_utils import compute_snr
from tqdm.auto import tqdm

from imgcollapse import faults
from imgcollapse.data import ImageSet, to_float, to_uint8
from imgcollapse.models import noise
from imgcollapse.models.train import default_accelerator, train

SAMPLERS = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # every scheduler in SAMPLERS takes these
CONFIG_FILE = "imgcollapse.json"


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


class DDPM:
    """Denoising diffusion model; `fit` trains from scratch for a fixed number of optimizer steps."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        accelerator: Accelerator | None = None,
        block_out_channels: tuple[int, ...] = (32, 48),
        layers_per_block: int = 1,
        attention: bool = False,
        num_classes: int | None = None,
        class_dropout: float = 0.1,
        train_steps: int = 600,
        batch_size: int = 128,
        lr: float = 3e-3,
        warmup_steps: int = 30,
        ema_decay: float | None = 0.999,
        grad_clip: float | None = 1.0,
        beta_schedule: str = "squaredcos_cap_v2",
        num_train_timesteps: int = 1000,
        prediction_type: str = "v_prediction",
        snr_gamma: float | None = 5.0,
        sampler: str = "ddim",
        sampling_steps: int = 25,
        guidance: float = 0.0,
        sample_batch_size: int = 128,
        compile: bool = False,
    ) -> None:
        self.config = {
            "image_shape": [int(v) for v in image_shape],
            "block_out_channels": [int(c) for c in block_out_channels],
            "layers_per_block": layers_per_block,
            "attention": attention,
            "num_classes": num_classes,
            "class_dropout": class_dropout,
            "train_steps": train_steps,
            "batch_size": batch_size,
            "lr": lr,
            "warmup_steps": warmup_steps,
            "ema_decay": ema_decay,
            "grad_clip": grad_clip,
            "beta_schedule": beta_schedule,
            "num_train_timesteps": num_train_timesteps,
            "prediction_type": prediction_type,
            "snr_gamma": snr_gamma,
            "sampler": sampler,
            "sampling_steps": sampling_steps,
            "guidance": guidance,
            "sample_batch_size": sample_batch_size,
            "compile": compile,
        }
        if sampler not in SAMPLERS:
            raise ValueError(f"model.sampler={sampler!r} is not one of {sorted(SAMPLERS)}")
        self.accelerator = accelerator or default_accelerator()
        self.image_shape = tuple(self.config["image_shape"])
        self.num_classes = num_classes
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                       prediction_type=prediction_type)
        self.unet = self._build(seed=0)

    def _build(self, seed: int) -> UNet2DModel:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            c = self.config
            return build_unet(self.image_shape, c["block_out_channels"], c["layers_per_block"], c["attention"],
                              self.num_classes)

    # Training -----------------------------------------------------------------------------------
    def _loss(self, unet: torch.nn.Module, x0: torch.Tensor, y: torch.Tensor | None, g: torch.Generator):
        eps = torch.randn(x0.shape, generator=g, device=x0.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x0),), generator=g, device=x0.device)
        xt = self.scheduler.add_noise(x0, eps, t)
        if self.num_classes:
            drop = torch.rand(len(y), generator=g, device=y.device) < self.config["class_dropout"]
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        pred = unet(xt, t, class_labels=y).sample
        target = eps if self.config["prediction_type"] == "epsilon" else self.scheduler.get_velocity(x0, eps, t)
        gamma = self.config["snr_gamma"]
        if not gamma:
            return F.mse_loss(pred, target)
        # Min-SNR-gamma weighting (Hang et al. 2023): stop easy, low-noise steps dominating the loss.
        snr = compute_snr(self.scheduler, t)
        weight = snr.clamp(max=gamma) / (snr + 1 if self.config["prediction_type"] == "v_prediction" else snr)
        return (weight * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()

    def fit(self, data: ImageSet, seed: int) -> dict[str, float]:
        """Train a freshly initialised UNet on `data` for `train_steps` steps."""
        if self.num_classes and data.labels is None:
            raise ValueError("a class-conditional DDPM (model.num_classes set) needs labelled training data")
        self.unet = self._build(seed)
        c = self.config
        # torch.compile shares the UNet's parameters: what it trains is what `self.unet` samples with
        network = torch.compile(self.unet) if c["compile"] else self.unet
        result = train(
            network, self._loss, to_float(data.images), data.labels if self.num_classes else None,
            steps=c["train_steps"], batch_size=c["batch_size"], lr=c["lr"], warmup_steps=c["warmup_steps"],
            ema_decay=c["ema_decay"], grad_clip=c["grad_clip"], seed=seed, accelerator=self.accelerator,
            desc="train ddpm",
        )
        return {"train_loss": result.loss, "train_seconds": result.seconds}

    # Sampling -----------------------------------------------------------------------------------
    def _eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        w = self.config["guidance"]
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
        c = self.config
        out = torch.empty((n, *self.image_shape), dtype=torch.uint8)
        bar = tqdm(total=n, desc="sample ddpm", disable=None, leave=False)
        for start in range(0, n, c["sample_batch_size"]):
            stop = min(n, start + c["sample_batch_size"])
            scheduler = SAMPLERS[c["sampler"]].from_config(self.scheduler.config)
            scheduler.set_timesteps(c["sampling_steps"], device=device)
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
        (path / CONFIG_FILE).write_text(json.dumps(self.config, indent=1))

    @classmethod
    def load(cls, path: Path, accelerator: Accelerator | None = None) -> DDPM:
        path = Path(path)
        config = json.loads((path / CONFIG_FILE).read_text())
        model = cls(accelerator=accelerator, **config)
        model.unet = UNet2DModel.from_pretrained(path / "unet")
        model.unet.eval()
        return model
