"""The paper's prompt workflows (issue 4) against diffusers, on the tiny random models.

The oracle is a denoising loop written here from diffusers' own UNet, VAE and scheduler and
transformers' CLIP text encoder (learned tokens added to its vocabulary the diffusers way), or
diffusers' own img2img / inpainting pipelines where they define the behaviour. Images are 64x64
(32x32 latents with the tiny VAE) and runs take a few steps, so the file stays fast on a CPU.
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mini_ldm
from mini_ldm import prompt as prompting
from mini_ldm import prompt_text
from mini_ldm.errors import UserError
from mini_ldm.starts import binary_mask, blur_mask, latent_mask
from mini_ldm.png import read_parameters

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # sample.py is imported in one test
    sys.path.insert(0, str(REPO))
SIZE = 64
FAST = dict(steps=3, height=SIZE, width=SIZE, progress=False)


# --- fixtures ---------------------------------------------------------------------------------------

def _load(folder):
    sd = mini_ldm.load(folder, device="cpu", dtype="fp32")
    g = torch.Generator().manual_seed(11)
    # Random (never zero) learned vectors; names as in the paper's A1111 embeddings and in our own files.
    for name, count in (("chexpert_pleural_effusion", 3), ("chexpert_pneumonia", 2), ("<ptx>", 64),
                        ("<effusion>", 64), ("<a>", 4), ("<b>", 4)):
        sd.add_learned_token(name, torch.randn(count, sd.width, generator=g) * 0.02)
    return sd


@pytest.fixture(scope="module")
def sd1(sd1_folder):
    return _load(sd1_folder)


@pytest.fixture(scope="module")
def ref1(sd1_folder, sd1):
    return Reference(sd1_folder, sd1.learned)


@pytest.fixture(scope="module")
def init_image():
    """A smooth, colourful 64x64 picture (a VAE round trip of noise would be meaningless)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rgb = np.stack([np.sin(6 * x) * 0.5 + 0.5, np.cos(5 * y) * 0.5 + 0.5, x * y], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def mask_image():
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (20, 14, 44, 40))
    return mask


def as_array(images):
    return np.stack([np.asarray(im) for im in images]).astype(int)


# --- the reference: diffusers' parts, our workflows written out plainly --------------------------

class Reference:
    """diffusers UNet/VAE/scheduler + transformers CLIP, learned tokens as added vocabulary entries."""

    def __init__(self, folder, learned):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
        self.vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
        self.text = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
        self.tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        self.config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        self.prediction = self.config["prediction_type"]
        # Each learned vector becomes a new word "<vN>" with that vector as its embedding row.
        self.words, self.groups, count = {}, {}, 0
        for name, vectors in learned.items():
            self.words[name] = [f"<v{count + k}>" for k in range(len(vectors))]
            self.tok.add_tokens(self.words[name])
            count += len(vectors)
        self.text.resize_token_embeddings(len(self.tok), mean_resizing=False)
        with torch.no_grad():
            table = self.text.get_input_embeddings().weight
            for name, vectors in learned.items():
                ids = self.tok.convert_tokens_to_ids(self.words[name])
                table[ids] = vectors
                self.groups[ids[0]] = ids

    def _units(self, text):
        """Token ids in unbreakable units: one id per word piece, one list per learned token."""
        for name, words in self.words.items():
            text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", " " + " ".join(words) + " ", text, flags=re.I)
        ids = self.tok(text, add_special_tokens=False).input_ids
        units, i = [], 0
        while i < len(ids):
            size = len(self.groups.get(ids[i], [ids[i]]))
            units.append(ids[i:i + size])
            i += size
        return units

    @torch.no_grad()
    def embed(self, text):
        """(1, 77 * windows, width): windows of <= 75 ids, learned tokens never split, each framed alone."""
        windows = [[]]
        for unit in self._units(text):
            if len(windows[-1]) + len(unit) > 75:
                windows.append([])
            windows[-1] += unit
        pad = self.tok.pad_token_id
        rows = []
        for w in windows:
            ids = [self.tok.bos_token_id] + w + [self.tok.eos_token_id]
            rows.append(self.text(torch.tensor([ids + [pad] * (77 - len(ids))])).last_hidden_state)
        return torch.cat(rows, dim=1)

    @torch.no_grad()
    def sample(self, parts, negative="", *, seed, steps, cfg=3.0, scheduler="euler_a", n=1, init=None,
               strength=1.0, mask=None):
        """eps = eps(neg) + sum_i w_i * cfg * (eps(p_i) - eps(neg)); contexts padded with empty windows.
        With init (pixels in [-1, 1]): img2img from the last `strength` of the schedule; with mask (0/1
        latent mask), latents outside it are the init's, noised to each step, and the init's at the end."""
        contexts = [self.embed(negative)] + [self.embed(t) for t, _ in parts]
        longest = max(c.shape[1] for c in contexts)
        empty = self.embed("")
        contexts = [torch.cat([c] + [empty] * ((longest - c.shape[1]) // 77), dim=1) for c in contexts]
        context = torch.cat([c.expand(n, -1, -1) for c in contexts])
        sched = diffusers_scheduler(scheduler, self.config)
        sched.set_timesteps(steps)
        gen = torch.Generator().manual_seed(seed)
        shape = (n, 4, SIZE // 2, SIZE // 2)
        timesteps, start = sched.timesteps, 0
        if init is None:
            latents = torch.randn(shape, generator=gen) * sched.init_noise_sigma
        else:
            start = steps - int(steps * strength)
            timesteps = sched.timesteps[start:]
            sched.set_begin_index(start)
            x0 = self.vae.encode(init).latent_dist.sample(gen) * self.vae.config.scaling_factor
            noise = torch.randn(shape, generator=gen)
            latents = sched.add_noise(x0, noise, timesteps[:1])
        k = len(contexts)
        for i, t in enumerate(timesteps):
            if mask is not None:  # Euler-type (VE) state: the init noised to this step is x0 + sigma * noise
                latents = mask * latents + (1 - mask) * (x0 + sched.sigmas[start + i] * noise)
            inp = sched.scale_model_input(latents, t)
            out = self.unet(torch.cat([inp] * k), t, encoder_hidden_states=context).sample
            uncond, *texts = out.chunk(k)
            eps = uncond
            for (_, w), text in zip(parts, texts):
                eps = eps + w * cfg * (text - uncond)
            latents = sched.step(eps, t, latents, generator=gen).prev_sample
        if mask is not None:
            latents = mask * latents + (1 - mask) * x0
        pixels = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        return (pixels * 255).round().astype(int)


def diffusers_scheduler(name, config):
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler)

    classes = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler}
    if name in classes:
        return classes[name].from_config(config)
    return DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=name == "dpm++2m_karras")


def assert_close_images(ours, ref, max_levels=2, mean_levels=0.05):
    diff = np.abs(as_array(ours) - ref) if not isinstance(ours, np.ndarray) else np.abs(ours - ref)
    assert diff.max() <= max_levels and diff.mean() <= mean_levels, (diff.max(), diff.mean())


# --- parsing and packing ------------------------------------------------------------------------------

def test_parse_and_follows_automatic1111():
    assert prompt_text.parse_and("chexpert_pleural_effusion:0.5 AND chexpert_pneumonia:0.5") == [
        ("chexpert_pleural_effusion", 0.5), ("chexpert_pneumonia", 0.5)]
    assert prompt_text.parse_and("healthy:0.7 AND diseased : .3 AND <ptx>") == [
        ("healthy", 0.7), ("diseased", 0.3), ("<ptx>", 1.0)]
    # ':' elsewhere is text; only a trailing ':number' is a weight; 'AND' must be a capitalised word.
    assert prompt_text.parse_and("view: PA, 1:2 ratio") == [("view: PA, 1:2 ratio", 1.0)]
    assert prompt_text.parse_and("sand AND\nandroid And x") == [("sand", 1.0), ("android And x", 1.0)]
    assert prompt_text.parse_and("a:-1.5") == [("a", -1.5)]
    parts = [("A b", 0.7), ("<c>", 0.3)]
    assert prompt_text.parse_and(prompt_text.format_and(parts)) == parts


def test_chunks(sd1):
    tok, learned = sd1.tokenizer, sd1.learned
    short = "a chest x-ray with <a> and chexpert_pneumonia"
    [one] = prompting.tokenize(tok, short, learned)
    single = prompting.first_window(tok, short, learned)
    assert one.ids == single.ids and [p for p, _ in one.vectors] == [p for p, _ in single.vectors]
    assert one.names == ["<a>", "chexpert_pneumonia"]
    # training needs one window: a learned token pushed out of it is an error, never silently dropped
    with pytest.raises(UserError, match="<a> does not fit"):
        prompting.first_window(tok, " ".join(["lung"] * 74) + " <a>", learned)

    two = prompting.tokenize(tok, "<ptx> <effusion>", learned)  # 64 + 64 vectors: one window each
    assert [len(c.ids) for c in two] == [77, 77]
    assert [[p for p, _ in c.vectors] for c in two] == [[1], [1]]
    assert two[0].ids[65] == tok.eos_id  # the first window closed early: BOS + 64 + EOS + padding

    words = " ".join(["lung"] * 100)
    plain = prompting.tokenize(tok, words, learned)
    assert [c.ids.index(tok.eos_id) for c in plain] == [76, 26]  # 75 + 25 tokens

    wide = dict(learned, **{"<huge>": torch.randn(80, sd1.width)})
    with pytest.raises(UserError, match="<huge>"):
        prompting.tokenize(tok, "<huge>", wide)
    assert sd1.encode_prompt(words).shape == (1, 154, sd1.width)


# --- guidance against the reference loop --------------------------------------------------------------

def test_composable_prompt_matches_reference(sd1, ref1):
    prompt = "chexpert_pleural_effusion:0.5 AND chexpert_pneumonia, chest x-ray:0.7 AND a lung:-0.2"
    ours, settings = sd1.sample(prompt, "blurry", seed=3, **FAST)
    assert settings.prompt == prompt
    ref = ref1.sample(prompt_text.parse_and(prompt), "blurry", seed=3, steps=3)
    assert_close_images(ours, ref)


def test_long_prompt_matches_reference(sd1, ref1):
    """120 plain tokens and two 64-vector embeddings (4 windows: 75, 45, 64, 64), a 1-window negative."""
    prompt = "frontal chest x-ray, " * 20 + "<ptx> <effusion>"
    assert len(prompting.tokenize(sd1.tokenizer, prompt, sd1.learned)) == 4
    ours, _ = sd1.sample(prompt, "text", seed=5, scheduler="dpm++2m_karras", **FAST)
    ref = ref1.sample([(prompt, 1.0)], "text", seed=5, steps=3, scheduler="dpm++2m_karras")
    assert_close_images(ours, ref)


def test_composable_v_prediction(sd2v_folder):
    sd = _load(sd2v_folder)
    ref = Reference(sd2v_folder, sd.learned)
    prompt = "<a>:0.6 AND a chest x-ray:0.4"
    ours, _ = sd.sample(prompt, seed=8, **FAST)
    assert_close_images(ours, ref.sample(prompt_text.parse_and(prompt), seed=8, steps=3))


# --- interpolation -----------------------------------------------------------------------------------

def test_interpolation_endpoints_are_the_single_prompts(sd1):
    a, b = "a healthy chest x-ray", "<effusion>"
    images, settings = sd1.interpolate(a, b, [0, 0.5, 1], seed=4, **FAST)
    assert [s.prompt for s in settings] == [f"{a}:1 AND {b}:0", f"{a}:0.5 AND {b}:0.5", f"{a}:0 AND {b}:1"]
    assert len({s.seed for s in settings}) == 1
    for image, single in ((images[0], a), (images[2], b)):
        assert np.array_equal(np.asarray(image), np.asarray(sd1.sample(single, seed=4, **FAST)[0][0]))
    assert not np.array_equal(np.asarray(images[1]), np.asarray(images[0]))


def test_interpolation_by_vectors(sd1):
    """<a>'s vectors blended with <b>'s inside a prompt; at alpha 1 it is the prompt with <b>."""
    images, settings = sd1.interpolate("<a>", "<b>", [0.5, 1], mode="vectors", prompt="x-ray of <a>", seed=4,
                                       **FAST)
    assert settings[0].extra["Alpha"] == 0.5 and settings[0].extra["Interpolate mode"] == "vectors"
    assert np.array_equal(np.asarray(images[1]), np.asarray(sd1.sample("x-ray of <b>", seed=4, **FAST)[0][0]))
    halfway = dict(sd1.learned, **{"<a>": 0.5 * sd1.learned["<a>"] + 0.5 * sd1.learned["<b>"]})
    expected = sd1.sample("x-ray of <a>", seed=4, learned=halfway, **FAST)[0]
    assert np.array_equal(np.asarray(images[0]), np.asarray(expected[0]))


def test_interpolation_errors(sd1):
    with pytest.raises(UserError, match="<ptx> has 64 vectors and <a> 4"):
        sd1.interpolate("<ptx>", "<a>", [0.5], mode="vectors", **FAST)
    with pytest.raises(UserError, match="--interpolate <nope>: not a learned token"):
        sd1.interpolate("<a>", "<nope>", [0.5], mode="vectors", **FAST)
    with pytest.raises(UserError, match="--interpolate <nope>"):
        sd1.interpolate("<nope>", "a lung", [0.5], **FAST)


# --- img2img -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheduler,n", [("euler_a", 2), ("dpm++2m_karras", 1)])
def test_img2img_matches_diffusers(sd1_folder, sd1, init_image, scheduler, n):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(sd1_folder, safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.scheduler = diffusers_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a chest x-ray", image=init_image, strength=0.6, num_inference_steps=5, guidance_scale=3.0,
               negative_prompt="blurry", num_images_per_prompt=n, generator=torch.Generator().manual_seed(9),
               output_type="np").images
    ours, settings = sd1.sample("a chest x-ray", "blurry", seed=9, steps=5, scheduler=scheduler, n=n,
                                init_image=init_image, strength=0.6, progress=False)
    assert settings.extra["Denoising strength"] == 0.6 and (settings.width, settings.height) == (SIZE, SIZE)
    assert_close_images(ours, (ref * 255).round().astype(int))


def test_img2img_strength_zero_is_the_vae_round_trip(sd1, ref1, init_image):
    from mini_ldm.starts import to_tensor

    ours, _ = sd1.sample("anything", seed=2, init_image=init_image, strength=0.0, **FAST)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(2)
        z = ref1.vae.encode(to_tensor(init_image)).latent_dist.sample(gen)
        pixels = ref1.vae.decode(z).sample
    ref = ((pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(int)
    assert_close_images(ours, ref, max_levels=1)


# --- inpainting --------------------------------------------------------------------------------------

def test_inpainting_keeps_outside_and_matches_reference(sd1, ref1, init_image, mask_image):
    from mini_ldm.starts import to_tensor

    small_mask = mask_image.resize((32, 32), Image.NEAREST)  # another size: resized to the image
    ours, settings = sd1.sample("<effusion>", seed=6, init_image=init_image, mask=small_mask, mask_blur=3,
                                strength=0.8, scheduler="euler_a", n=2, **{**FAST, "steps": 4})
    assert settings.extra["Mask blur"] == 3
    binary = binary_mask(small_mask, SIZE, SIZE)
    alpha = blur_mask(binary, 3)[0, 0].numpy()
    outside = alpha == 0
    assert 0.3 < outside.mean() < 0.9  # the mask and its feathered edge are a real part of the image
    got, init = as_array(ours), np.asarray(init_image).astype(int)
    assert np.array_equal(got[:, outside], np.broadcast_to(init[outside], got[:, outside].shape))
    assert np.abs(got[:, alpha == 1] - init[alpha == 1]).mean() > 5  # something was repainted

    keep_mask = latent_mask(binary, 2)
    ref = ref1.sample([("<effusion>", 1.0)], seed=6, steps=4, n=2, init=to_tensor(init_image), strength=0.8,
                      mask=keep_mask)
    inside = alpha == 1
    assert_close_images(got[:, inside], ref[:, inside])


def test_inpainting_unet_matches_diffusers(tmp_path, sd1_folder, init_image, mask_image):
    """A 9-channel UNet (like SD 2.0's 512-inpainting-ema) gets mask + masked-image latents as input."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
    from devkit.tiny_models import randomize_

    folder = tmp_path / "inpainting"
    shutil.copytree(sd1_folder, folder, ignore=shutil.ignore_patterns("unet"))
    config = dict(UNet2DConditionModel.load_config(sd1_folder / "unet"), in_channels=9)
    randomize_(UNet2DConditionModel.from_config(config), seed=21).save_pretrained(folder / "unet")

    sd = mini_ldm.load(folder, device="cpu", dtype="fp32")
    assert sd.is_inpainting_model
    ours, _ = sd.sample("a chest x-ray", "blurry", seed=12, init_image=init_image, mask=mask_image, mask_blur=0,
                        strength=0.75, scheduler="euler_a", **{**FAST, "steps": 4})
    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = diffusers_scheduler("euler_a", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a chest x-ray", image=init_image, mask_image=mask_image, strength=0.75, num_inference_steps=4,
               guidance_scale=3.0, negative_prompt="blurry", height=SIZE, width=SIZE,
               generator=torch.Generator().manual_seed(12), output_type="np").images
    ref = (ref * 255).round().astype(int)
    inside = np.asarray(mask_image) >= 128
    got = as_array(ours)
    assert_close_images(got[:, inside], ref[:, inside])
    assert np.array_equal(got[0, ~inside], np.asarray(init_image).astype(int)[~inside])


def test_bad_inputs(sd1, init_image, tmp_path):
    with pytest.raises(UserError, match="--init-image .*missing.png: no such file"):
        sd1.sample("x", init_image=tmp_path / "missing.png", **FAST)
    with pytest.raises(UserError, match="--mask .*nomask.png: no such file"):
        sd1.sample("x", init_image=init_image, mask=tmp_path / "nomask.png", **FAST)
    with pytest.raises(UserError, match="--strength 1.5"):
        sd1.sample("x", init_image=init_image, strength=1.5, **FAST)
    with pytest.raises(UserError, match="--mask needs --init-image"):
        sd1.sample("x", mask=init_image, **FAST)
    (tmp_path / "junk.png").write_text("not a png")
    with pytest.raises(UserError, match="--init-image .*junk.png: not a readable image"):
        sd1.sample("x", init_image=tmp_path / "junk.png", **FAST)


# --- the command line --------------------------------------------------------------------------------

def run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "sample.py"), "--device", "cpu", "--steps", "3",
                           "--height", str(SIZE), "--width", str(SIZE), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_interpolate_strip(sd1_folder, sd1, tmp_path):
    out = tmp_path / "strip"
    r = run_cli("--model", sd1_folder, "--interpolate", "a chest x-ray", "a knee", "--alphas", "0,0.5",
                "--seed", 5, "--output", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["00000-5.png", "00001-5.png", "strip-00000-5.png"]
    assert read_parameters(out / "00001-5.png").startswith("a chest x-ray:0.5 AND a knee:0.5\n")
    strip = Image.open(out / "strip-00000-5.png")
    assert strip.width == 2 * SIZE and strip.height > SIZE and "Alphas" in read_parameters(out / "strip-00000-5.png")
    first = sd1.sample("a chest x-ray", seed=5, **FAST)[0][0]
    assert np.array_equal(np.asarray(Image.open(out / "00000-5.png")), np.asarray(first))


def test_cli_inpainting_with_grid(sd1_folder, tmp_path, init_image, mask_image):
    """Inpainting from files, two 64-vector embeddings in one prompt (two windows), a batch of 2 + grid."""
    from mini_ldm.embeddings import Embedding, write_embedding

    g = torch.Generator().manual_seed(3)
    for token in ("<ptx>", "<effusion>"):
        write_embedding(tmp_path / "emb" / f"{token[1:-1]}.safetensors",
                        Embedding(token, torch.randn(64, 128, generator=g) * 0.02))
    init_image.save(tmp_path / "init.png")
    mask_image.resize((40, 40)).save(tmp_path / "mask.png")
    r = run_cli("--model", sd1_folder, "--embeddings", "emb", "--prompt", "<ptx> <effusion>", "--init-image",
                "init.png", "--mask", "mask.png", "--mask-blur", 2, "--strength", 0.7, "--n", 2, "--seed", 1,
                "--output", "out.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "<ptx> (64 vectors)" in r.stdout
    assert sorted(p.name for p in tmp_path.glob("out*.png")) == ["out-0.png", "out-1.png", "out-grid.png"]
    params = read_parameters(tmp_path / "out-1.png")
    assert "Denoising strength: 0.7" in params and "Mask blur: 2" in params and "Init image: init.png" in params
    assert Image.open(tmp_path / "out-grid.png").size == (2 * SIZE, SIZE)
    assert "Batch size: 2" in read_parameters(tmp_path / "out-grid.png")
    alpha = blur_mask(binary_mask(Image.open(tmp_path / "mask.png").convert("L"), SIZE, SIZE), 2)[0, 0].numpy()
    got = np.asarray(Image.open(tmp_path / "out-0.png")).astype(int)
    assert np.array_equal(got[alpha == 0], np.asarray(init_image).astype(int)[alpha == 0])


def test_cli_bad_input_is_one_line(sd1_folder, tmp_path):
    r = run_cli("--model", sd1_folder, "--prompt", "x", "--init-image", "nowhere.png", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: --init-image nowhere.png: no such file")


def test_cli_flag_errors(sd1_folder, tmp_path, monkeypatch):
    import sample

    monkeypatch.chdir(tmp_path)
    base = ["--model", str(sd1_folder), "--device", "cpu", "--steps", "2", "--height", "64", "--width", "64"]
    cases = [([], "--prompt is required"),
             (["--prompt", "x", "--init-image", "i.png", "--strength", "1.5"], "--strength 1.5"),
             (["--interpolate", "a", "b", "--alphas", "0,x"], "--alphas 0,x"),
             (["--interpolate", "<a>", "b", "--interpolate-mode", "vectors"], "--interpolate <a>: not a learned")]
    Image.new("RGB", (64, 64)).save(tmp_path / "i.png")
    for args, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            sample.main(base + args)
