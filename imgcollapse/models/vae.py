"""A small convolutional VAE (Shumailov et al.'s setting): Gaussian prior, sampling temperature.

The encoder halves the image once per entry of `block_out_channels` (3×3 convolutions, stride 2, so any
height and width works, odd ones included); the decoder mirrors it, upsampling to the exact sizes the
encoder saw. Samples are the decoder's mean image for prior draws `z = temperature · ε`.

Pixel likelihood (`likelihood`): `gaussian` is a calibrated decoder (Rybkin et al. 2021, "σ-VAE"): one
shared variance, set to the batch's mean squared error, which maximises the likelihood. It is scale-free,
so a later generation whose images have less contrast still has reason to use its latent code.
`bernoulli` is the classic MNIST choice (cross-entropy on intensities); on smooth synthetic images its
irreducible entropy outweighs what the latent code can explain, and the next VAE ignores its latent
(posterior collapse), so every sample becomes the same image within a few generations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from omegaconf import MISSING
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from imgcollapse import faults
from imgcollapse.data import ImageSet
from imgcollapse.errors import require
from imgcollapse.models import SamplingConfig, noise, read_model_config, write_model_config
from imgcollapse.models.train import TrainingConfig, default_accelerator, train

WEIGHTS_FILE = "vae.safetensors"
LIKELIHOODS = ("gaussian", "bernoulli")
MIN_LOG_SIGMA = -6.0  # the calibrated decoder's floor: sigma ≈ 0.0025, below one 8-bit grey level


def level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """Feature-map size at each encoder level, the input first (a stride-2 3×3 conv maps n to ceil(n/2))."""
    sizes = [(height, width)]
    for _ in range(levels):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


class VAENet(nn.Module):
    """Conv encoder to (mu, logvar) of a `latent_dim` Gaussian; mirrored decoder to per-pixel logits."""

    def __init__(self, image_shape: tuple[int, int, int], block_out_channels: list[int], latent_dim: int) -> None:
        super().__init__()
        channels, height, width = image_shape
        widths = list(block_out_channels)
        self.sizes = level_sizes(height, width, len(widths))
        h, w = self.sizes[-1]
        self.bottleneck = (widths[-1], h, w)

        encoder: list[nn.Module] = []
        for c_in, c_out in zip([channels, *widths[:-1]], widths, strict=True):
            encoder += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        self.to_latent = nn.Linear(widths[-1] * h * w, 2 * latent_dim)

        self.from_latent = nn.Linear(latent_dim, widths[-1] * h * w)
        decoder: list[nn.Module] = []
        for level in range(len(widths) - 1, -1, -1):  # mirror of the encoder: upsample, then convolve
            decoder += [nn.Upsample(size=self.sizes[level], mode="nearest"),
                        nn.Conv2d(widths[level], widths[level - 1] if level else channels, 3, padding=1)]
            if level:
                decoder.append(nn.SiLU())
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_latent(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits: sigmoid gives the mean image in [0, 1]."""
        return self.decoder(F.silu(self.from_latent(z)).view(len(z), *self.bottleneck))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass (reparameterised with noise `eps`): mu, logvar and the decoded logits."""
        mu, logvar = self.encode(x)
        return mu, logvar, self.decode(mu + eps * (0.5 * logvar).exp())


@dataclass
class VAEConfig(TrainingConfig):
    """`model=vae`: widths, latent size and likelihood (values and their reasons: conf/model/vae.yaml)."""

    _target_: str = "imgcollapse.models.vae.VAE"
    latent_dim: int = MISSING
    likelihood: str = MISSING
    beta: float = MISSING

    def check(self) -> None:
        """The model's own keys."""
        super().check()
        require(self.latent_dim > 0, "model.latent_dim", self.latent_dim, "an integer > 0")
        require(self.likelihood in LIKELIHOODS, "model.likelihood", self.likelihood, f"one of {list(LIKELIHOODS)}")
        require(self.beta > 0, "model.beta", self.beta, "> 0 (1: the plain ELBO)")


class VAE:
    """Convolutional VAE; `fit` trains from scratch for a fixed number of optimizer steps."""

    Config = VAEConfig
    SAMPLING_KEYS = ("temperature", "batch_size")

    def __init__(self, config: VAEConfig, *, image_shape: tuple[int, int, int], sampling: SamplingConfig,
                 accelerator: Accelerator | None = None) -> None:
        self.config = config
        self.sampling = sampling
        self.accelerator = accelerator or default_accelerator()
        self.image_shape = tuple(int(v) for v in image_shape)
        self.num_classes = None  # unconditional: the chain labels its samples with the metrics classifier
        self.net = self._build(seed=0)

    def _build(self, seed: int) -> VAENet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return VAENet(self.image_shape, self.config.block_out_channels, self.config.latent_dim)

    # Training -----------------------------------------------------------------------------------
    def _loss(self, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None, g: torch.Generator):
        """Negative ELBO per pixel (nats): reconstruction + beta · KL(q(z|x) || N(0, I))."""
        eps = torch.randn((len(x), self.config.latent_dim), generator=g, device=x.device)
        # through forward, so that a DDP-wrapped network (several processes) syncs its gradients
        mu, logvar, logits = net(x * 2 - 1, eps)
        if self.config.likelihood == "bernoulli":
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            squared = (torch.sigmoid(logits) - x).pow(2)
            log_sigma = (0.5 * squared.mean().log()).clamp(min=MIN_LOG_SIGMA)  # the likelihood-maximising sigma
            recon = squared / (2 * (2 * log_sigma).exp()) + log_sigma + 0.5 * math.log(2 * math.pi)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (recon.flatten(1).sum(1) + self.config.beta * kl).mean() / x[0].numel()

    def fit(self, data: ImageSet, seed: int, init_from: Path | None = None) -> dict[str, float]:
        """Train on `data`: a freshly initialised VAE, or (`init_from`: a saved model's directory) fine-tune its
        weights, for the budget `model.budget` sets (TrainingConfig.fit_budget)."""
        self._check_shape(data.shape)
        self.net = self._build(seed)
        if init_from is not None:  # the weights on disk, so a resumed chain starts from the same bits
            self.net.load_state_dict(load_file(Path(init_from) / WEIGHTS_FILE))
        c = self.config
        budget = c.fit_budget(len(data), finetune=init_from is not None)
        result = train(
            self.net, self._loss, data.images.float() / 255.0, None,
            steps=budget.steps, batch_size=c.batch_size, lr=budget.lr, warmup_steps=budget.warmup_steps,
            ema_decay=c.ema_decay, grad_clip=c.grad_clip, seed=seed, accelerator=self.accelerator,
            desc="train vae",
        )
        return {"train_loss": result.loss, "train_seconds": result.seconds, "train_steps": result.steps}

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if tuple(shape) != self.image_shape:
            raise ValueError(f"this VAE was built for images of shape {self.image_shape}, got {tuple(shape)}")

    # Sampling -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, n: int, seed: int, labels: torch.Tensor | None = None) -> ImageSet:
        """Decode `n` prior draws z = temperature · ε; image i depends only on (seed, i). Labels are ignored."""
        device = self.accelerator.device
        self.net.to(device).eval()
        s = self.sampling
        out = torch.empty((n, *self.image_shape), dtype=torch.uint8)
        for start in tqdm(range(0, n, s.batch_size), desc="sample vae", disable=None, leave=False):
            stop = min(n, start + s.batch_size)
            z = noise((self.config.latent_dim,), seed, start, stop).to(device) * s.temperature
            out[start:stop] = torch.sigmoid(self.net.decode(z)).mul(255).round().clamp(0, 255).to(torch.uint8).cpu()
            faults.reached("sample")
        return ImageSet(out, None)

    # Persistence --------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Weights as safetensors plus the constructor config: `VAE.load(path)` rebuilds it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, path / WEIGHTS_FILE)
        write_model_config(path, self.config, self.image_shape, self.sampling)

    @classmethod
    def load(cls, path: Path, accelerator: Accelerator | None = None) -> VAE:
        """The model `save` wrote, with its sampling settings."""
        path = Path(path)
        config, image_shape, sampling = read_model_config(path, cls.Config)
        model = cls(config, image_shape=image_shape, sampling=sampling, accelerator=accelerator)
        model.net.load_state_dict(load_file(path / WEIGHTS_FILE))
        model.net.eval()
        return model
