"""SDXL base on tiny random SDXL-shaped models (tiny_models.make_sdxl_folder), in both layouts, against diffusers'
StableDiffusionXLPipeline and its text encoders (transformers' CLIPTextModel / CLIPTextModelWithProjection).

Images: fp32 CPU, at most 3 levels anywhere and under 0.1 on average, as for SD 1/2 (test_pipeline.py).
"""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import mini_ldm
from devkit.reference import reference_images
from mini_ldm.errors import CheckpointError
from mini_ldm.unet import added_conditioning

diffusers = pytest.importorskip("diffusers")

SCHEDULERS = {  # ours -> (diffusers class, from_config overrides), all on SDXL base's own config (leading)
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
}
PROMPT, NEGATIVE = "a frontal chest x-ray, PA view", "blurry, text"
SEED, STEPS, N = 7, 4, 2


@pytest.fixture(scope="module")
def pipe(sdxl_folder):
    p = diffusers.StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def reference(pipe):
    """reference(scheduler, **call) -> diffusers' uint8 images (n, H, W, 3)."""
    config, images = pipe.scheduler.config, {}

    def get(scheduler, prompt=PROMPT, negative=NEGATIVE, cfg=3.0, height=64, width=64):
        key = (scheduler, prompt, negative, cfg, height, width)
        if key not in images:
            images[key] = reference_images(pipe, SCHEDULERS[scheduler], config, prompt, negative, STEPS, cfg,
                                           height, width, N, SEED)
        return images[key]

    return get


def sample(sd, scheduler, prompt=PROMPT, negative=NEGATIVE, cfg=3.0, height=64, width=64):
    images, _ = sd.sample(prompt, negative or "", seed=SEED, steps=STEPS, cfg=cfg, scheduler=scheduler,
                          height=height, width=width, n=N, progress=False)
    return np.stack([np.asarray(im) for im in images])


def assert_same_image(got, want):
    assert got.shape == want.shape and want.std() > 5 and not np.array_equal(want[0], want[1])
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 3 and diff.mean() < 0.1, (diff.max(), diff.mean())


@pytest.mark.parametrize("layout", ["folder", "single"])
def test_family_and_defaults_read_from_the_files(tiny, layout):
    sd = tiny("sdxl", layout)
    assert sd.family == "sdxl" and sd.prediction == "epsilon"
    assert sd.vae.cfg.scale == 0.13025
    assert sd.unet.cfg.attention_levels == (1, 2) and sd.unet.cfg.transformer_depth == (0, 2, 3)
    assert sd.unet.cfg.middle_depth == 3 and sd.unet.cfg.adm_in_channels == 128 + 6 * 256
    assert sd.checkpoint.scheduler_config["timestep_spacing"] == "leading"
    assert (sd.tokenizer.pad_id, sd.tokenizer_2.pad_id) == (49407, 0)
    assert sd.native_size == (32 if layout == "folder" else 1024)  # folder: 16 latents x the tiny VAE's 2


@pytest.mark.parametrize("layout", ["folder", "single"])
def test_text_encoders_match_diffusers(tiny, pipe, layout):
    """Context = both penultimate hidden states without final norm, side by side; pooled = bigG's projection."""
    sd = tiny("sdxl", layout)
    want_context, want_negative, want_pooled, want_negative_pooled = pipe.encode_prompt(
        PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=NEGATIVE)
    got = sd.conditioning(PROMPT)
    assert got.context.shape == (1, 77, 192) and got.pooled.shape == (1, 128)
    torch.testing.assert_close(got.context, want_context, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.pooled, want_pooled, rtol=1e-5, atol=1e-5)
    negative = sd.conditioning(NEGATIVE)
    torch.testing.assert_close(negative.context, want_negative, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(negative.pooled, want_negative_pooled, rtol=1e-5, atol=1e-5)
    # hidden states -2 are not the final layer's output, and the final norm is not applied
    from transformers import CLIPTextModel
    hf = CLIPTextModel.from_pretrained(sd.checkpoint.path / "text_encoder") if layout == "folder" else None
    if hf is not None:
        ids = torch.tensor([sd.tokenizer(PROMPT)])
        last = hf(ids).last_hidden_state
        assert not torch.allclose(got.context[..., :64], last, atol=1e-3)


def test_unet_matches_diffusers_with_added_conditioning(tiny, pipe):
    sd = tiny("sdxl", "single")
    gen = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 8, 6, generator=gen), torch.randn(2, 77, 192, generator=gen)
    pooled = torch.randn(2, 128, generator=gen)
    sizes = torch.tensor([[64.0, 48, 0, 0, 64, 48], [1024, 768, 12, 30, 64, 48]])
    t = torch.tensor([999.0, 3.0])
    want = pipe.unet(x, t, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": sizes}).sample
    got = sd.unet(x, t, context, added_conditioning(pooled, sizes))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    other = sd.unet(x, t, context, added_conditioning(pooled, sizes.flip(0)))
    assert (other - got).abs().max() > 1e-3  # the size numbers reach the output


@pytest.mark.parametrize("layout", ["folder", "single"])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_same_image_as_diffusers(tiny, reference, layout, scheduler):
    assert_same_image(sample(tiny("sdxl", layout), scheduler), reference(scheduler))


def test_empty_negative_prompt_is_the_zero_conditioning(tiny, reference):
    """diffusers' force_zeros_for_empty_prompt: no negative prompt = zero context and zero pooled vector."""
    sd = tiny("sdxl", "folder")
    assert_same_image(sample(sd, "euler", negative=None, height=64, width=48), reference("euler", negative=None,
                                                                                          height=64, width=48))
    negative, _ = sd._conditioning([(PROMPT, 1.0)], "", sd.learned)
    assert not negative.context.any() and not negative.pooled.any()


def test_no_guidance_matches_diffusers(tiny, reference):
    assert_same_image(sample(tiny("sdxl", "single"), "euler_a", cfg=1.0), reference("euler_a", cfg=1.0))


def test_micro_conditioning_is_the_image_size(tiny, monkeypatch):
    sd = tiny("sdxl", "single")
    seen = []
    real = added_conditioning
    monkeypatch.setattr("mini_ldm.prompt.added_conditioning", lambda p, s: seen.append(s) or real(p, s))
    sd.sample(PROMPT, seed=1, steps=1, scheduler="euler", height=48, width=32, progress=False)
    assert seen and all(s.tolist() == [[48, 32, 0, 0, 48, 32]] for s in seen)


def test_fp16_loads_in_half_precision(tiny):
    sd = tiny("sdxl", "single", dtype="fp16")
    assert sd.unet.label_emb[0][0].weight.dtype == torch.float16
    assert sd.text_encoder_2.text_projection.weight.dtype == torch.float16


def test_an_fp16_file_loads(sdxl_single, tiny, tmp_path):
    """sd_xl_base_1.0.safetensors is stored in fp16: it loads into fp32 modules, the same model up to rounding."""
    half = tmp_path / "sd_xl_base_1.0.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(str(sdxl_single)).items()}, str(half))
    sd, ref = mini_ldm.load(half, device="cpu", dtype="fp32"), tiny("sdxl", "single")
    assert sd.family == "sdxl" and sd.unet.label_emb[0][0].weight.dtype == torch.float32
    torch.testing.assert_close(sd.conditioning(PROMPT).pooled, ref.conditioning(PROMPT).pooled, rtol=2e-2, atol=2e-2)


def _refuse(path, *words):
    with pytest.raises(CheckpointError) as e:
        mini_ldm.load(path, device="cpu", dtype="fp32")
    message = str(e.value)
    assert "\n" not in message and str(path) in message and all(w in message for w in words), message


def test_refiner_and_partial_files_are_refused_in_one_line(sdxl_single, tmp_path):
    tensors = load_file(str(sdxl_single))
    bigg = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v for k, v in tensors.items()
            if k.startswith("conditioner.embedders.1.")}
    rest = {k: v for k, v in tensors.items() if not k.startswith("conditioner.")}
    save_file({**rest, **bigg}, str(tmp_path / "sd_xl_refiner_1.0.safetensors"))
    _refuse(tmp_path / "sd_xl_refiner_1.0.safetensors", "refiner")
    save_file(rest, str(tmp_path / "unet_only.safetensors"))
    _refuse(tmp_path / "unet_only.safetensors", "part of an SDXL", "no CLIP ViT-L text encoder")
    no_unet = {k: v for k, v in tensors.items() if not k.startswith("model.diffusion_model.")}
    save_file(no_unet, str(tmp_path / "text_only.safetensors"))
    _refuse(tmp_path / "text_only.safetensors", "no UNet")


def test_refiner_folder_is_refused(sdxl_folder, tmp_path):
    import shutil
    refiner = tmp_path / "stable-diffusion-xl-refiner-1.0"
    shutil.copytree(sdxl_folder, refiner)
    shutil.rmtree(refiner / "text_encoder")
    _refuse(refiner, "refiner")


@pytest.mark.parametrize("vae_layout", ["folder", "diffusers file", "ldm file"])
def test_vae_swapped_in(sdxl_folder, sdxl_single, tiny, tmp_path, vae_layout):
    """--vae: the same VAE weights from another place decode the same image; other weights decode another."""
    if vae_layout == "folder":
        vae_path = sdxl_folder / "vae"
    elif vae_layout == "diffusers file":
        vae_path = sdxl_folder / "vae" / "diffusion_pytorch_model.safetensors"
    else:
        tensors = load_file(str(sdxl_single))
        vae_path = tmp_path / "sdxl_vae.safetensors"
        save_file({k.removeprefix("first_stage_model."): v for k, v in tensors.items()
                   if k.startswith("first_stage_model.")}, str(vae_path))
    swapped = mini_ldm.load(sdxl_single, device="cpu", dtype="fp32", vae=vae_path)
    assert swapped.vae.cfg == tiny("sdxl", "single").vae.cfg
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.asarray(swapped.decode(z)[0]), np.asarray(tiny("sdxl", "single").decode(z)[0]))


def test_vae_that_is_not_a_vae_is_refused(sdxl_single, sd1_folder):
    with pytest.raises(CheckpointError, match="--vae"):
        mini_ldm.load(sdxl_single, device="cpu", dtype="fp32", vae=sd1_folder / "unet")


def test_sdxl_folder_without_text_encoder_2_is_refused(sdxl_folder, tmp_path):
    """Issue 24 B.19: its UNet takes SDXL's added conditioning, so it is an SDXL folder missing a part, not an
    SD 1/2 folder (which would load and then die at the first step)."""
    import shutil
    partial = tmp_path / "sdxl-without-bigg"
    shutil.copytree(sdxl_folder, partial)
    shutil.rmtree(partial / "text_encoder_2")
    _refuse(partial, "SDXL", "text_encoder_2/")


def _sixteen_channel_vae(path, quant_convs: bool):
    """A random VAE with 16 latent channels (the SD3/Flux kind), as a diffusers-layout file."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from devkit.tiny_models import randomize_
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(32, 64), layers_per_block=1, latent_channels=16, norm_num_groups=32,
                        use_quant_conv=quant_convs, use_post_quant_conv=quant_convs)
    save_file({k: v.contiguous() for k, v in randomize_(vae, 0).state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("quant_convs", [True, False])
def test_vae_with_16_latent_channels_is_refused_at_load(sdxl_single, tmp_path, quant_convs):
    """Issue 24 B.18: named by its latent channels, at load, not with a traceback at the first step."""
    vae = _sixteen_channel_vae(tmp_path / "ae.safetensors", quant_convs)
    with pytest.raises(CheckpointError) as e:
        mini_ldm.load(sdxl_single, device="cpu", dtype="fp32", vae=vae)
    message = str(e.value)
    assert "\n" not in message and "--vae" in message and str(vae) in message, message
    assert "16 latent channels" in message and "4-channel" in message, message


# --- workflows -------------------------------------------------------------------------------------


def _test_image(h=64, w=48):
    from PIL import Image
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def test_img2img_matches_diffusers(tiny, pipe):
    sd = tiny("sdxl", "single")
    image = _test_image()
    i2i = diffusers.StableDiffusionXLImg2ImgPipeline(**pipe.components)
    i2i.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(i2i.scheduler.config)
    i2i.set_progress_bar_config(disable=True)
    want = i2i(PROMPT, image=image, strength=0.6, negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=3.0,
               num_images_per_prompt=N, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    got, settings = sd.sample(PROMPT, NEGATIVE, seed=SEED, steps=5, cfg=3.0, scheduler="euler_a", n=N, strength=0.6,
                              init_image=image, progress=False)
    assert (settings.height, settings.width) == (64, 48)
    assert_same_image(np.stack([np.asarray(im) for im in got]), (want * 255).round().astype(np.uint8))


def test_inpainting_keeps_the_pixels_outside_the_mask(tiny):
    from PIL import Image
    sd = tiny("sdxl", "folder")
    image = _test_image()
    mask = np.zeros((64, 48), np.uint8)
    mask[16:48, 8:40] = 255
    images, _ = sd.sample(PROMPT, seed=SEED, steps=3, scheduler="dpm++2m", init_image=image, strength=1.0,
                          mask=Image.fromarray(mask), mask_blur=2, progress=False)
    got, original = np.asarray(images[0]).astype(int), np.asarray(image).astype(int)
    far = np.ones_like(mask, bool)
    far[16 - 4:48 + 4, 8 - 4:40 + 4] = False  # beyond the feathered edge
    assert np.array_equal(got[far], original[far])
    assert np.abs(got[20:44, 12:36] - original[20:44, 12:36]).mean() > 5  # the inside was redrawn


def test_long_prompt_pools_its_first_window(tiny):
    from mini_ldm import prompt as prompting
    sd = tiny("sdxl", "single")
    long = ", ".join(["a frontal chest x-ray with a small effusion"] * 12)
    conditioning = sd.conditioning(long)
    assert conditioning.context.shape == (1, 77 * 2, 192)
    first = prompting.tokenize(sd.tokenizer_2, long, {})[:1]
    _, pooled = prompting.encode_pooled(sd.text_encoder_2, first, "cpu")
    torch.testing.assert_close(conditioning.pooled, pooled)
    images, _ = sd.sample(long, NEGATIVE, seed=1, steps=2, scheduler="euler", height=32, width=32, progress=False)
    assert np.asarray(images[0]).std() > 1


def test_and_gives_each_sub_prompt_its_own_pooled_vector(tiny):
    """"A:0.5 AND A:0.5" is guidance-wise "A"; "A:0.5 AND B:0.5" is not, and differs from "A" only through B."""
    sd = tiny("sdxl", "single")

    def draw(prompt):
        images, _ = sd.sample(prompt, NEGATIVE, seed=3, steps=3, cfg=3.0, scheduler="euler", height=32, width=32,
                              progress=False)
        return np.asarray(images[0]).astype(int)

    single, halves = draw(PROMPT), draw(f"{PROMPT}:0.5 AND {PROMPT}:0.5")
    assert np.abs(single - halves).max() <= 1
    assert np.abs(single - draw(f"{PROMPT}:0.5 AND a hand x-ray:0.5")).mean() > 0.5


def test_dataset_seeds_draw_the_images_of_single_runs(tiny):
    sd = tiny("sdxl", "folder")
    settings = mini_ldm.SampleSettings(prompt=PROMPT, steps=2, scheduler="euler_a", height=32, width=32)
    images, used = sd.sample_seeds(settings, [11, 12])
    for image, s in zip(images, used):
        alone, _ = sd.sample(settings=mini_ldm.SampleSettings(prompt=PROMPT, steps=2, scheduler="euler_a",
                                                              height=32, width=32, seed=s.seed), progress=False)
        assert np.abs(np.asarray(image).astype(int) - np.asarray(alone[0]).astype(int)).max() <= 1
