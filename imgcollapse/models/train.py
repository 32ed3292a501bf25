"""The one training loop shared by the torch models: accelerate, AdamW + cosine schedule, EMA, NaN guard."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from omegaconf import MISSING
from tqdm.auto import tqdm

from imgcollapse import faults
from imgcollapse.errors import TrainingDiverged, require  # noqa: F401  (TrainingDiverged: its old home)
from imgcollapse.progress import Steps

log = logging.getLogger(__name__)

INITS = ("scratch", "base", "previous")  # where generation g >= 1 starts: new weights, generation 0's, g-1's
BUDGETS = ("steps", "epochs")  # a fixed number of optimizer steps, or a fixed number of passes over the data

# loss_fn(network, images, labels, generator) -> scalar loss for one batch
LossFn = Callable[[torch.nn.Module, torch.Tensor, "torch.Tensor | None", torch.Generator], torch.Tensor]


@dataclass
class TrainingConfig:
    """Keys of the training loop the torch models share (`model.*` of ddpm and vae)."""

    block_out_channels: list[int] = MISSING
    train_steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    warmup_steps: int = MISSING
    ema_decay: float | None = MISSING
    grad_clip: float | None = MISSING
    init: str = MISSING  # where generation g >= 1 starts (INITS); generation 0 always from scratch
    finetune_steps: int | None = MISSING  # steps of a generation that starts from earlier weights (None: train_steps)
    finetune_lr: float | None = MISSING  # its peak learning rate (None: lr)
    budget: str = MISSING  # BUDGETS: fixed optimizer steps, or passes over the training set
    epochs: float | None = MISSING  # budget=epochs: passes over the training set per fit
    finetune_epochs: float | None = MISSING  # budget=epochs: passes of a fine-tune (None: epochs)

    def check_training_size(self, key: str, size: int, why: str) -> None:
        """A training set of `size` images (named by config `key`) must hold a batch, and a batch should not repeat
        images."""
        require(size >= self.batch_size, key, size,
                f"at least model.batch_size={self.batch_size}: {why}, and a batch should not repeat them")

    def check(self) -> None:
        """Ranges of the shared training keys (ConfigError naming the key)."""
        require(len(self.block_out_channels) > 0 and all(c > 0 for c in self.block_out_channels),
                "model.block_out_channels", self.block_out_channels, "a non-empty list of positive widths")
        require(self.train_steps > 0, "model.train_steps", self.train_steps, "an integer > 0")
        require(self.batch_size > 0, "model.batch_size", self.batch_size, "an integer > 0")
        require(self.lr > 0, "model.lr", self.lr, "a learning rate > 0")
        require(0 <= self.warmup_steps <= self.train_steps, "model.warmup_steps", self.warmup_steps,
                f"an integer in [0, model.train_steps={self.train_steps}]")
        require(self.ema_decay is None or 0 < self.ema_decay < 1, "model.ema_decay", self.ema_decay,
                "null or in (0, 1)")
        require(self.grad_clip is None or self.grad_clip > 0, "model.grad_clip", self.grad_clip,
                "null (no clipping) or > 0")
        require(self.init in INITS, "model.init", self.init, f"one of {list(INITS)}")
        require(self.finetune_steps is None or self.finetune_steps >= 0, "model.finetune_steps", self.finetune_steps,
                "null (model.train_steps) or an integer >= 0")
        require(self.finetune_lr is None or self.finetune_lr > 0, "model.finetune_lr", self.finetune_lr,
                "null (model.lr) or a learning rate > 0")
        require(self.budget in BUDGETS, "model.budget", self.budget, f"one of {list(BUDGETS)}")
        require(self.budget != "epochs" or (self.epochs is not None and self.epochs > 0), "model.epochs",
                self.epochs, "a number of passes > 0 (model.budget=epochs sizes each fit by it)")
        require(self.finetune_epochs is None or self.finetune_epochs >= 0, "model.finetune_epochs",
                self.finetune_epochs, "null (model.epochs) or a number of passes >= 0")

    def fit_budget(self, num_images: int, finetune: bool) -> FitBudget:
        """Optimizer steps, peak learning rate and warm-up of one fit on `num_images` images: a fine-tune (a
        generation that starts from earlier weights) has its own steps and rate where they are set."""
        lr = self.finetune_lr if finetune and self.finetune_lr is not None else self.lr
        if self.budget == "steps":
            steps = self.finetune_steps if finetune and self.finetune_steps is not None else self.train_steps
        else:  # passes over the training set: compute grows with it (Gerstgrasser et al.'s accumulate)
            epochs = self.finetune_epochs if finetune and self.finetune_epochs is not None else self.epochs
            steps = math.ceil(epochs * num_images / self.batch_size)
        # a short fine-tune keeps the schedule's shape: warm-up never longer than the fit itself
        return FitBudget(steps=steps, lr=lr, warmup_steps=min(self.warmup_steps, steps))


@dataclass
class FitBudget:
    """What one fit spends (TrainingConfig.fit_budget)."""

    steps: int
    lr: float
    warmup_steps: int


@dataclass
class TrainResult:
    loss: float  # mean loss over the last 10% of steps
    seconds: float
    steps: int


def mixed_precision(setting: str) -> str:
    """`auto`: bf16 on a GPU that supports it, else none (on most CPUs bf16 costs more than it saves)."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def enable_tf32() -> None:
    """TF32 matmuls and convolutions on Ampere and later GPUs: free speed for the fp32 parts."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def default_accelerator() -> Accelerator:
    """A single-process accelerator on the best available device."""
    return Accelerator()


def train(
    network: torch.nn.Module,
    loss_fn: LossFn,
    images: torch.Tensor,  # float, already in the model's input range
    labels: torch.Tensor | None,
    *,
    steps: int,  # optimizer steps: the budget, independent of the data size
    batch_size: int,  # global batch, split across processes
    lr: float,
    warmup_steps: int,
    ema_decay: float | None,  # None: no EMA, the raw weights are kept
    grad_clip: float | None,
    seed: int,
    accelerator: Accelerator | None = None,
    check_every: int = 25,  # how often the NaN guard looks (a host sync on GPU)
    desc: str = "train",
) -> TrainResult:
    """Train `network` in place for `steps` steps; on return it holds the EMA weights if EMA is on. Zero steps
    leave it as it is (a fine-tune of no steps: the starting model itself), with a NaN loss."""
    if steps == 0:
        network.eval()
        return TrainResult(loss=math.nan, seconds=0.0, steps=0)
    # Initialize.
    accelerator = accelerator or default_accelerator()
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    local_batch = max(1, batch_size // world)
    generator = torch.Generator(device=device).manual_seed(seed * 1000 + rank)

    # Data: one tensor on the device, batches drawn by index, no DataLoader.
    images = images.to(device)
    labels = labels.to(device) if labels is not None else None
    n = len(images)

    # Network and optimizer.
    network.to(device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps)
    model, optimizer = accelerator.prepare(network, optimizer)
    ema = EMAModel(network.parameters(), decay=ema_decay, foreach=True) if ema_decay else None

    # Train.
    losses = torch.zeros(steps, device=device)
    last_checked = 0
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=desc, disable=None if accelerator.is_main_process else True, leave=False)
    progress = Steps(steps, desc, enabled=None if accelerator.is_main_process else False)  # a log without a terminal
    for step in range(steps):
        idx = torch.randint(n, (local_batch,), generator=generator, device=device)
        batch_labels = labels[idx] if labels is not None else None
        with accelerator.autocast():
            loss = loss_fn(model, images[idx], batch_labels, generator)
        accelerator.backward(loss)
        if grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(network.parameters())
        losses[step] = loss.detach()
        faults.reached("train_step")
        if (step + 1) % check_every == 0 or step + 1 == steps:
            _check_finite(losses, last_checked, step + 1, lr)
            last_checked = step + 1
            recent = losses[max(0, step - check_every + 1) : step + 1].mean().item()
            bar.set_postfix(loss=f"{recent:.4f}")
            bar.update(step + 1 - bar.n)
            progress.update(step + 1, recent)
    bar.close()
    seconds = time.perf_counter() - start

    # Done: keep the averaged weights, which are what samples are drawn from; let go of the wrapped copies
    # (the accelerator would otherwise hold every generation's model and optimizer).
    if ema is not None:
        ema.copy_to(network.parameters())
    network.eval()
    accelerator.free_memory()
    tail = losses[-max(1, steps // 10) :]
    return TrainResult(loss=float(tail.mean()), seconds=seconds, steps=steps)


def _check_finite(losses: torch.Tensor, start: int, stop: int, lr: float | None = None) -> None:
    chunk = losses[start:stop]
    bad = ~torch.isfinite(chunk)
    if bool(bad.any()):
        step = start + int(bad.nonzero()[0])
        finite = losses[:step][torch.isfinite(losses[:step])]
        raise TrainingDiverged(step, float(finite[-1]) if len(finite) else None, lr)

