"""The flow-matching model families (``sd3``, ``flux``) against the diffusers pipelines they drive, on tiny
SD3- and FLUX-shaped pipelines built offline (tests/tiny_pipelines.py)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tiny_pipelines import TINY_MAX_SEQUENCE_LENGTH, tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sd_pipeline

RES = 16  # pixels: 8×8 latents
PROMPTS = ["a red circle", "square"]


def _family(kind, pipe=None):
    from rdpo_zoo.flow_families import FluxFamily, SD3Family

    if kind == "sd3":
        return SD3Family(pipe or tiny_sd3_pipeline(), max_sequence_length=TINY_MAX_SEQUENCE_LENGTH)
    return FluxFamily(pipe or tiny_flux_pipeline(), max_sequence_length=TINY_MAX_SEQUENCE_LENGTH)


def _capture_first_call(module):
    """Record the keyword arguments and the output of ``module``'s first call."""
    seen = {}

    def hook(_, args, kwargs, output):
        if not seen:
            seen.update(kwargs=dict(kwargs), output=output[0].detach().clone())

    return seen, module.register_forward_hook(hook, with_kwargs=True)


def _pipeline_first_call(pipe, kind, x, guidance_scale, num_steps=3):
    """Run the diffusers pipeline from latents ``x`` (unpacked) and return its first transformer call."""
    from diffusers import FluxPipeline

    seen, handle = _capture_first_call(pipe.transformer)
    latents = x
    if kind == "flux":
        B, C, h, w = x.shape
        latents = FluxPipeline._pack_latents(x, B, C, h, w)
    try:
        pipe(PROMPTS, num_inference_steps=num_steps, guidance_scale=guidance_scale, height=RES, width=RES,
             latents=latents, max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, output_type="latent")
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_denoise_is_the_pipelines_transformer_call(kind):
    """encode + denoise give what the pipeline's own first transformer call gives (CFG batch for SD3; packed
    latents, position ids and guidance embedding for FLUX), and the step options give the pipeline's timesteps."""
    from diffusers import FluxPipeline

    family = _family(kind)
    pipe = family.pipe
    family.guidance_scale = 3.5
    x = torch.randn(2, *family.latent_shape(RES), generator=torch.Generator().manual_seed(1))
    seen = _pipeline_first_call(pipe, kind, x, guidance_scale=3.5)
    t_pipe = seen["kwargs"]["timestep"]

    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(3, **family.step_options(RES, 3))
    t0 = scheduler.timesteps[0].expand(2)
    cond = family.encode(PROMPTS, torch.device("cpu"), RES)
    with torch.no_grad():
        if kind == "sd3":
            torch.testing.assert_close(t_pipe, torch.cat([t0, t0]), rtol=0, atol=0)
            o = family.denoise(family.denoiser, torch.cat([x, x]), torch.cat([t0, t0]),
                               torch.cat([cond.uncond, cond.cond]),
                               {k: torch.cat([cond.added_uncond[k], cond.added_cond[k]]) for k in cond.added_cond})
            expected = seen["output"]
        else:
            torch.testing.assert_close(t_pipe, t0 / 1000, rtol=0, atol=0)
            assert family.uses_cfg is False
            o = family.denoise(family.denoiser, x, t0, cond.cond, cond.added_cond)
            expected = FluxPipeline._unpack_latents(seen["output"], RES, RES, family.vae_scale)
    assert o.shape == (2 * len(x) if kind == "sd3" else len(x), *x.shape[1:])  # unpacked, as x
    torch.testing.assert_close(o, expected, rtol=1e-5, atol=1e-6)


def test_flux_guidance_enters_through_the_embedding():
    family = _family("flux")
    x = torch.randn(1, *family.latent_shape(RES), generator=torch.Generator().manual_seed(2))
    cond = family.encode(PROMPTS[:1], torch.device("cpu"), RES)
    t = torch.tensor([500.0])
    with torch.no_grad():
        family.guidance_scale = 1.0
        o1 = family.denoise(family.denoiser, x, t, cond.cond, cond.added_cond)
        family.guidance_scale = 4.0
        o4 = family.denoise(family.denoiser, x, t, cond.cond, cond.added_cond)
    assert (o1 - o4).abs().max() > 1e-4


def test_flux_step_options_are_the_pipelines_shift():
    """μ = calculate_shift of the packed sequence length, and FLUX's own sigmas linspace(1, 1/N, N)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    family = _family("flux")
    options = family.step_options(RES, 4)
    assert options["mu"] == pytest.approx(calculate_shift(16, 256, 4096, 0.5, 1.15))  # (8/2)·(8/2) tokens
    assert options["sigmas"] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert family.step_options(32, 4)["mu"] == pytest.approx(calculate_shift(64, 256, 4096, 0.5, 1.15))
    assert _family("sd3").step_options(RES, 4) == {}  # SD3: the scheduler's static shift


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_decode_is_the_pipelines_decode(kind):
    """decode (scaling and shift factor; FLUX unpacked) equals the pipeline's own image from the same latents."""
    from diffusers import FluxPipeline

    family = _family(kind)
    pipe = family.pipe
    kwargs = dict(num_inference_steps=2, height=RES, width=RES, max_sequence_length=TINY_MAX_SEQUENCE_LENGTH)
    latents = pipe(PROMPTS[:1], output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs).images
    images = pipe(PROMPTS[:1], output_type="pt", generator=torch.Generator().manual_seed(0), **kwargs).images
    if kind == "flux":
        latents = FluxPipeline._unpack_latents(latents, RES, RES, family.vae_scale)
    assert family.vae.config.shift_factor
    with torch.no_grad():
        torch.testing.assert_close(family.decode(latents), images, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_lora_on_the_transformer_reloads_through_load_lora_weights(kind, tmp_path):
    """LoRA on the attention projections of the transformer; what save_lora writes, a fresh pipeline's
    load_lora_weights reloads to the same output within 1e-5."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from rdpo_zoo.run_folder import LORA_WEIGHT_NAME

    family = _family(kind)
    torch.manual_seed(3)
    family.denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                           target_modules=list(family.lora_target_modules)))
    with torch.no_grad():  # peft starts B at 0: a trained-looking adapter instead
        for name, p in family.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    state = get_peft_model_state_dict(family.denoiser)
    targets = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in state}
    assert {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"} <= targets
    x = torch.randn(2, *family.latent_shape(RES), generator=torch.Generator().manual_seed(4))
    cond = family.encode(PROMPTS, torch.device("cpu"), RES)
    t = torch.tensor([700.0, 300.0])
    with torch.no_grad():
        o_lora = family.denoise(family.denoiser, x, t, cond.cond, cond.added_cond)
        family.denoiser.disable_adapters()
        o_base = family.denoise(family.denoiser, x, t, cond.cond, cond.added_cond)
        family.denoiser.enable_adapters()
    assert (o_lora - o_base).abs().max() > 1e-3  # the adapter does something

    folder = tmp_path / "new" / "lora"  # save_lora creates it
    family.save_lora(folder, state)
    assert (folder / LORA_WEIGHT_NAME).exists()
    fresh = _family(kind, tiny_sd3_pipeline() if kind == "sd3" else tiny_flux_pipeline())
    fresh.pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHT_NAME)
    with torch.no_grad():
        o_reloaded = fresh.denoise(fresh.denoiser, x, t, cond.cond, cond.added_cond)
    torch.testing.assert_close(o_reloaded, o_lora, rtol=0, atol=1e-5)


def test_latent_shapes_and_bad_resolutions():
    sd3, flux = _family("sd3"), _family("flux")
    assert sd3.latent_shape(RES) == (4, 8, 8) and flux.latent_shape(RES) == (4, 8, 8)
    assert sd3.default_resolution() == 16  # the transformer's sample size × the VAE factor
    for family in (sd3, flux):
        with pytest.raises(ValueError, match="resolution: expected a positive multiple of 4"):
            family.latent_shape(18)


def test_a_pipeline_without_a_transformer_is_refused_in_one_line():
    from rdpo_zoo.flow_families import FluxFamily, SD3Family

    pipe = tiny_sd_pipeline()
    for cls in (SD3Family, FluxFamily):
        assert not cls.matches(pipe)
        with pytest.raises(ValueError) as info:
            cls(pipe)
        assert "\n" not in str(info.value) and "has no transformer" in str(info.value)
    assert SD3Family.matches(tiny_sd3_pipeline()) and not FluxFamily.matches(tiny_sd3_pipeline())
    assert FluxFamily.matches(tiny_flux_pipeline()) and not SD3Family.matches(tiny_flux_pipeline())


def test_max_sequence_length_defaults_and_checks():
    from rdpo_zoo.flow_families import FluxFamily, SD3Family

    pipe = tiny_sd3_pipeline(t5=False)
    assert SD3Family(pipe).max_sequence_length == 256  # the pipeline's default: no T5 tokenizer to cap it
    assert SD3Family(tiny_sd3_pipeline()).max_sequence_length == 16  # capped at the tiny T5 tokenizer's length
    pipe.rdpo_max_sequence_length = 4  # what the model part sets
    assert SD3Family(pipe).max_sequence_length == 4
    assert SD3Family(pipe).encode(["a"], torch.device("cpu"), RES).cond.shape[1] == 16 + 4  # CLIP + T5 tokens
    with pytest.raises(ValueError, match="max_sequence_length: expected an integer in"):
        FluxFamily(tiny_flux_pipeline(), max_sequence_length=0)


def test_sd3_model_part_loads_a_folder_saved_without_t5(tmp_path):
    """The ``sd3`` model part loads a local folder (no download), passing text_encoder_3=None and
    tokenizer_3=None for a folder saved without T5; its max_sequence_length reaches the family."""
    from rdpo_zoo.flow_families import SD3Family
    from rdpo_zoo.registry import get_registry

    pipe = tiny_sd3_pipeline(t5=False)
    pipe.save_pretrained(tmp_path)
    with open(os.path.join(tmp_path, "model_index.json")) as f:
        assert json.load(f)["text_encoder_3"] == [None, None]
    loaded = get_registry().get("model", "sd3").build({"id": str(tmp_path), "max_sequence_length": "4"})
    assert loaded.text_encoder_3 is None and loaded.tokenizer_3 is None
    family = SD3Family(loaded)
    assert family.max_sequence_length == 4
    x = torch.randn(1, *family.latent_shape(RES), generator=torch.Generator().manual_seed(5))
    cond = family.encode(["a red circle"], torch.device("cpu"), RES)
    with torch.no_grad():
        o = family.denoise(family.denoiser, x, torch.tensor([900.0]), cond.cond, cond.added_cond)
        o_saved = SD3Family(pipe, max_sequence_length=4).denoise(pipe.transformer, x, torch.tensor([900.0]),
                                                                 cond.cond, cond.added_cond)
    torch.testing.assert_close(o, o_saved, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_the_engines_sampler_at_eta_0_is_the_pipeline(kind):
    """DiffusionModel over the family and the flow step family at η = 0 (diffusers' Euler step) reproduces
    ``pipe(...)`` from the same initial latents: timesteps (FLUX: μ and sigmas of this resolution), conditioning,
    CFG or the guidance embedding, packing and every step."""
    from diffusers import FluxPipeline

    from rdpo_zoo.diffusion import DiffusionModel

    pipe = tiny_sd3_pipeline() if kind == "sd3" else tiny_flux_pipeline()
    pipe.rdpo_max_sequence_length = TINY_MAX_SEQUENCE_LENGTH
    model = DiffusionModel(pipe, sampler="flow-sde", eta=0.0, num_steps=3, guidance_scale=3.0, resolution=RES,
                           family=kind)
    x = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(6))
    seen, handle = _capture_first_call(pipe.transformer)
    latents = x if kind == "sd3" else FluxPipeline._pack_latents(x, 2, *x.shape[1:])
    try:
        expected = pipe(PROMPTS, num_inference_steps=3, guidance_scale=3.0, height=RES, width=RES, latents=latents,
                        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, output_type="latent").images
    finally:
        handle.remove()
    torch.testing.assert_close(model.timesteps, pipe.scheduler.timesteps, rtol=0, atol=0)
    if kind == "flux":
        expected = FluxPipeline._unpack_latents(expected, RES, RES, model.family.vae_scale)
        assert model.family.uses_cfg is False
    out = model.sample(model.encode(PROMPTS), torch.Generator().manual_seed(0), latents=x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert model.unet_calls == 3 * 2 * (2 if kind == "sd3" else 1)  # CFG doubles SD3's calls, not FLUX's


def test_flux_timesteps_follow_the_resolution():
    from rdpo_zoo.diffusion import DiffusionModel

    pipe = tiny_flux_pipeline()
    small = DiffusionModel(pipe, sampler="flow-sde", num_steps=3, resolution=16, family="flux")
    large = DiffusionModel(pipe, sampler="flow-sde", num_steps=3, resolution=64, family="flux")
    assert float(small.timesteps[0]) == float(large.timesteps[0]) == 1000.0  # σ = 1 at the first step either way
    assert (large.timesteps[1:] > small.timesteps[1:]).all()  # more image tokens, larger μ, more shift


def test_naming_a_flow_family_for_a_unet_pipeline_is_a_one_line_error():
    from rdpo_zoo.diffusion import DiffusionModel
    from rdpo_zoo.errors import UserInputError

    for family in ("sd3", "flux"):
        with pytest.raises(UserInputError, match=f"model family '{family}': pipeline StableDiffusionPipeline has no "
                                                 "transformer") as info:
            DiffusionModel(tiny_sd_pipeline(), sampler="flow-sde", family=family)
        assert "\n" not in str(info.value)


def test_the_registry_lists_the_flow_families_and_model_parts():
    from rdpo_zoo.registry import get_registry

    registry = get_registry()
    assert {"sd3", "flux"} <= set(registry.names("model-family"))
    assert registry.get("model", "sd3").family == "sd3" and registry.get("model", "flux").family == "flux"


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_encode_images_is_the_inverse_of_decodes_scaling_and_shift(kind):
    """decode(encode_images(images)) is the VAE's own reconstruction (the encoder's mean): scaling and shift cancel."""
    family = _family(kind)
    images = torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        mean = family.vae.encode(images * 2 - 1).latent_dist.mean
        expected = (family.vae.decode(mean).sample / 2 + 0.5).clamp(0, 1)
        torch.testing.assert_close(family.decode(family.encode_images(images)), expected, rtol=1e-5, atol=1e-5)


def test_preview_samples_a_flux_pipeline_from_packed_latents():
    from rdpo_zoo.errors import UserInputError
    from rdpo_zoo.preview import sample_images

    pipe = tiny_flux_pipeline()
    pipe.rdpo_max_sequence_length = TINY_MAX_SEQUENCE_LENGTH
    a = sample_images(pipe, PROMPTS, seed=3, steps=2)
    assert a.shape == (2, 3, RES, RES) and 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, sample_images(pipe, PROMPTS, seed=3, steps=2))
    assert not torch.equal(a, sample_images(pipe, PROMPTS, seed=4, steps=2))
    with pytest.raises(UserInputError, match="^eta: a flux pipeline"):
        sample_images(pipe, PROMPTS, steps=2, eta=0.0)


@pytest.mark.parametrize("model, flags, guidance", [
    ("flux", [], 3.5),  # guidance-distilled: FluxPipeline's default in its guidance embedding, not CFG 5
    ("flux", ["--guidance-scale", "2"], 2.0),  # asked for: kept
    ("sd3", [], 5.0),  # classifier-free: the method's
])
def test_train_takes_the_model_familys_guidance_unless_one_is_asked_for(model, flags, guidance, capsys):
    from rdpo_zoo.cli.train_cmd import resolve_config

    given = {"guidance_scale": float(flags[1])} if flags else {}
    config = resolve_config(None, given, {"model": model})
    assert config.method["guidance_scale"] == guidance
    assert ("takes guidance 3.5 by default" in capsys.readouterr().err) == (model == "flux" and not flags)
