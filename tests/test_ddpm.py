"""The diffusion model on its own: deterministic sampling, save/load, the diffusers pipeline."""

from __future__ import annotations

import pytest
import torch
from conftest import digits, make_model
from diffusers import DDIMPipeline, DDPMPipeline

from imgcollapse.models import noise
from imgcollapse.models.ddpm import DDPM

pytestmark = pytest.mark.slow  # runs chains, studies or commands: not in `make test-fast`


def tiny(guidance: float = 0.0, **kw) -> DDPM:
    kw = {"train_steps": 10, "batch_size": 8, "warmup_steps": 1} | kw
    return make_model("ddpm", sampling={"steps": 3, "batch_size": 4, "guidance": guidance}, **kw)


def test_noise_does_not_depend_on_batching():
    whole = noise((1, 4, 4), seed=3, start=0, stop=600)
    assert torch.equal(whole[250:270], noise((1, 4, 4), seed=3, start=250, stop=270))
    assert not torch.equal(whole, noise((1, 4, 4), seed=4, start=0, stop=600))


def test_sampling_is_deterministic_for_a_seed():
    model = tiny()
    model.fit(digits().train, seed=0)
    a, b = model.sample(10, seed=5), model.sample(10, seed=5)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, model.sample(10, seed=6).images)
    assert torch.equal(model.sample(3, seed=5).images, a.images[:3])  # image i depends on (seed, i) only


def test_fit_is_deterministic_for_a_seed():
    data = digits().train
    a, b = tiny(), tiny()
    assert a.fit(data, seed=1)["train_loss"] == b.fit(data, seed=1)["train_loss"]
    assert torch.equal(a.sample(4, seed=0).images, b.sample(4, seed=0).images)


def test_save_load_and_diffusers_pipelines(tmp_path):
    model = tiny()
    model.fit(digits().train, seed=0)
    model.save(tmp_path / "model")
    again = DDPM.load(tmp_path / "model")
    assert torch.equal(model.sample(6, seed=1).images, again.sample(6, seed=1).images)
    pipe = DDPMPipeline.from_pretrained(tmp_path / "model")
    out = pipe(batch_size=2, num_inference_steps=3, output_type="np").images
    assert out.shape == (2, 8, 8, 1)
    ddim = DDIMPipeline.from_pretrained(tmp_path / "model")
    assert ddim(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, 8, 8, 1)


# Class conditioning and classifier-free guidance ------------------------------------------------
class Spy(torch.nn.Module):
    """Wraps a UNet and records the class labels of every call."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet, self.seen = unet, []

    def forward(self, x, t, class_labels=None):
        self.seen.append(None if class_labels is None else class_labels.clone())
        return self.unet(x, t, class_labels=class_labels)


def test_conditional_unet_has_a_null_class():
    assert tiny(num_classes=10).unet.config.num_class_embeds == 11  # ids 0..9 and the null class 10
    assert tiny().unet.config.num_class_embeds is None


def test_training_drops_conditions_at_the_configured_rate():
    model = tiny(num_classes=10, class_dropout=0.1)
    spy = Spy(model.unet)
    y = torch.arange(4000) % 10
    model._loss(spy, torch.zeros(4000, 1, 8, 8), y, torch.Generator().manual_seed(0))
    seen = spy.seen[0]
    dropped = seen == 10
    assert 0.08 < dropped.float().mean().item() < 0.12
    assert torch.equal(seen[~dropped], y[~dropped])  # the rest keep their own label


def test_guidance_extrapolates_from_the_unconditional_prediction():
    model = tiny(num_classes=10, guidance=2.0)
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor(500), torch.tensor([1, 4, 7])
    with torch.no_grad():
        cond = model.unet(x, t, class_labels=y).sample
        uncond = model.unet(x, t, class_labels=torch.full_like(y, 10)).sample
        torch.testing.assert_close(model._eps(x, t, y), cond + 2.0 * (cond - uncond), atol=1e-5, rtol=1e-4)
        model.sampling.guidance = 0.0
        torch.testing.assert_close(model._eps(x, t, y), cond, atol=1e-5, rtol=1e-4)


def test_conditional_ddpm_with_guidance_fits_samples_saves_and_loads(tmp_path):
    data = digits().train
    model = tiny(num_classes=10, guidance=1.0)
    model.fit(data, seed=0)
    labels = torch.tensor([0, 3, 3, 9, 5])
    out = model.sample(5, seed=2, labels=labels)
    assert torch.equal(out.labels, labels)  # synthetic images carry the conditions that made them
    assert torch.equal(out.images, model.sample(5, seed=2, labels=labels).images)
    other = model.sample(5, seed=2, labels=torch.tensor([1, 1, 1, 1, 1]))
    assert not torch.equal(out.images[0], other.images[0])  # the condition reaches the UNet
    model.sampling.guidance = 0.0
    assert not torch.equal(out.images, model.sample(5, seed=2, labels=labels).images)  # guidance matters
    model.sampling.guidance = 1.0
    model.save(tmp_path / "model")
    again = DDPM.load(tmp_path / "model")
    assert again.num_classes == 10 and again.sampling.guidance == 1.0
    assert torch.equal(again.sample(5, seed=2, labels=labels).images, out.images)


def test_conditional_ddpm_needs_labels():
    model = tiny(num_classes=10)
    with pytest.raises(ValueError, match="labels"):
        model.sample(2, seed=0)
    unlabelled = digits().train
    unlabelled.labels = None
    with pytest.raises(ValueError, match="labelled"):
        model.fit(unlabelled, seed=0)
