"""K fits of one torch network trained in lock-step in one process: their weights stacked on a leading axis and one
vmapped forward and backward a step (torch.func), so a device trains K chains' generations with the kernel launches
of one. Each fit draws its batches and noise from its own generator, in the order `train` draws them, and has its
own gradient clipping, so each result is what a separate `train` call gives, to float rounding (vmap turns the K
convolutions into one grouped convolution, which sums in another order; a weight whose true gradient is 0, such
as an attention key's bias, gets rounding noise that Adam scales to a step either way, so it matches no better).

Written for a GPU, which one 0.7 M-parameter UNet leaves mostly idle. On CPU cores a stacked step costs about what
K separate steps cost (scripts/bench.py --stacked K measures both on whatever device it runs on).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from torch.func import functional_call, stack_module_state, vmap

from imgcollapse.errors import TrainingDiverged
from imgcollapse.models.train import TrainResult, _check_finite

log = logging.getLogger(__name__)

# draw(images, labels, generator) -> the batch's tensors (a tuple; None where unused), drawn from `generator`
Draw = Callable[[torch.Tensor, "torch.Tensor | None", torch.Generator], tuple]
# loss(network_call, batch) -> scalar: network_call(*args, **kwargs) runs the fit's own weights
Loss = Callable[[Callable, tuple], torch.Tensor]

# modules whose training-mode behaviour a stacked (eval-mode, functional) forward would drop
STATEFUL = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout)


@dataclass
class Fit:
    """One of the stacked fits: its network (trained in place), its training images (float, the model's input
    range) and labels, and its seed (the generator `train` would seed with it)."""

    network: torch.nn.Module
    images: torch.Tensor
    labels: torch.Tensor | None
    seed: int


def check_stackable(networks: Sequence[torch.nn.Module]) -> None:
    """The networks share one architecture and have no batch norm or active dropout (ValueError naming it)."""
    shapes = [[(n, tuple(p.shape)) for n, p in net.named_parameters()] for net in networks]
    if any(s != shapes[0] for s in shapes[1:]):
        raise ValueError("stacked fits need networks of one architecture: their parameters' names and shapes differ")
    for name, module in networks[0].named_modules():
        if isinstance(module, STATEFUL) and not (isinstance(module, torch.nn.Dropout) and module.p == 0):
            raise ValueError(f"stacked fits run the network in eval mode; its {type(module).__name__} {name!r} "
                             "behaves differently in training (batch norm or dropout > 0)")


def train_stacked(
    fits: Sequence[Fit],
    draw: Draw,
    loss: Loss,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    ema_decay: float | None,
    grad_clip: float | None,
    device: torch.device | str = "cpu",
    autocast: Callable[[], AbstractContextManager] = nullcontext,  # a fresh context a step (accelerator.autocast)
    check_every: int = 25,
) -> list[TrainResult]:
    """Train every fit's network in place for `steps` steps, as `models.train.train` would train each alone
    (one process, AdamW without weight decay, cosine schedule with warm-up, EMA, per-fit gradient clipping; a NaN in
    any fit stops all, naming it). Each result's seconds are the whole stacked loop's wall time (shared: summing
    them over fits counts it K times). `autocast` must not be fp16's: there is no loss scaling here."""
    if not fits:
        return []
    networks = [f.network for f in fits]
    check_stackable(networks)
    if steps == 0:
        for net in networks:
            net.eval()
        return [TrainResult(loss=math.nan, seconds=0.0, steps=0) for _ in fits]
    device = torch.device(device)
    generators = [torch.Generator(device=device).manual_seed(f.seed * 1000) for f in fits]  # train()'s, rank 0
    data = [(f.images.to(device), f.labels.to(device) if f.labels is not None else None) for f in fits]

    # The stacked weights are the leaves the optimizer steps; the skeleton only lends its forward.
    for net in networks:
        net.to(device)
    params, buffers = stack_module_state(networks)
    skeleton = copy.deepcopy(networks[0]).to("meta").eval()
    for module in skeleton.modules():  # diffusers' attention: vmap has no batching rule for the fused SDPA kernels
        if isinstance(module, Attention):  # (it would loop over the K fits); the bmm processor has one
            module.set_processor(AttnProcessor())

    rebuild: Callable = tuple  # the draw's own tuple type (a NamedTuple's fields by name), set on the first step

    def one(p: dict, b: dict, *batch) -> torch.Tensor:
        return loss(lambda *args, **kwargs: functional_call(skeleton, (p, b), args, kwargs), rebuild(batch))

    leaves = list(params.values())
    optimizer = torch.optim.AdamW(leaves, lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps)
    ema = EMAModel(leaves, decay=ema_decay, foreach=True) if ema_decay else None

    losses = torch.zeros(len(fits), steps, device=device)
    last_checked = 0
    start = time.perf_counter()
    for step in range(steps):
        batches = []
        for (images, labels), generator in zip(data, generators, strict=True):
            idx = torch.randint(len(images), (batch_size,), generator=generator, device=device)
            batches.append(draw(images[idx], labels[idx] if labels is not None else None, generator))
        rebuild = getattr(type(batches[0]), "_make", tuple)
        parts = [None if part[0] is None else torch.stack(part) for part in zip(*batches, strict=True)]
        fused = vmap(one, in_dims=(0, 0, *[None if p is None else 0 for p in parts]))
        with autocast():
            per_fit = fused(params, buffers, *parts)
        per_fit.sum().backward()  # the fits share no weight: each slice's gradient is its own loss's
        if grad_clip:
            _clip_each(leaves, grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(leaves)
        losses[:, step] = per_fit.detach().float()
        if (step + 1) % check_every == 0 or step + 1 == steps:
            for k in range(len(fits)):
                try:
                    _check_finite(losses[k], last_checked, step + 1, lr)
                except TrainingDiverged:  # the fits step together: one fit's NaN stops them all
                    log.error("stacked fit %d of %d (seed %d) diverged; the other fits stop with it", k + 1,
                              len(fits), fits[k].seed)
                    raise
            last_checked = step + 1
    seconds = time.perf_counter() - start

    if ema is not None:
        ema.copy_to(leaves)
    with torch.no_grad():
        for k, net in enumerate(networks):
            for name, value in params.items():
                net.get_parameter(name).copy_(value[k])
            net.eval()
    tail = losses[:, -max(1, steps // 10):]
    return [TrainResult(loss=float(t.mean()), seconds=seconds, steps=steps) for t in tail]


def _clip_each(leaves: list[torch.Tensor], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ for each fit alone: the norm over one slice of every stacked gradient."""
    grads = [p.grad for p in leaves if p.grad is not None]
    norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in grads], dim=1).norm(dim=1)  # (K,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))
