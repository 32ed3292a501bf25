"""The diffusion model on its own: deterministic sampling, save/load, the diffusers pipeline."""

from __future__ import annotations

import torch
from diffusers import DDIMPipeline, DDPMPipeline

from imgcollapse.data.digits import load_digits
from imgcollapse.models import noise
from imgcollapse.models.ddpm import DDPM


def tiny(**kw) -> DDPM:
    kw = {"train_steps": 10, "batch_size": 8, "warmup_steps": 1, "sampling_steps": 3, "sample_batch_size": 4} | kw
    return DDPM((1, 8, 8), **kw)


def test_noise_does_not_depend_on_batching():
    whole = noise((1, 4, 4), seed=3, start=0, stop=600)
    assert torch.equal(whole[250:270], noise((1, 4, 4), seed=3, start=250, stop=270))
    assert not torch.equal(whole, noise((1, 4, 4), seed=4, start=0, stop=600))


def test_sampling_is_deterministic_for_a_seed():
    model = tiny()
    model.fit(load_digits().train, seed=0)
    a, b = model.sample(10, seed=5), model.sample(10, seed=5)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, model.sample(10, seed=6).images)
    assert torch.equal(model.sample(3, seed=5).images, a.images[:3])  # image i depends on (seed, i) only


def test_fit_is_deterministic_for_a_seed():
    data = load_digits().train
    a, b = tiny(), tiny()
    assert a.fit(data, seed=1)["train_loss"] == b.fit(data, seed=1)["train_loss"]
    assert torch.equal(a.sample(4, seed=0).images, b.sample(4, seed=0).images)


def test_save_load_and_diffusers_pipelines(tmp_path):
    model = tiny()
    model.fit(load_digits().train, seed=0)
    model.save(tmp_path / "model")
    again = DDPM.load(tmp_path / "model")
    assert torch.equal(model.sample(6, seed=1).images, again.sample(6, seed=1).images)
    pipe = DDPMPipeline.from_pretrained(tmp_path / "model")
    out = pipe(batch_size=2, num_inference_steps=3, output_type="np").images
    assert out.shape == (2, 8, 8, 1)
    ddim = DDIMPipeline.from_pretrained(tmp_path / "model")
    assert ddim(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, 8, 8, 1)
