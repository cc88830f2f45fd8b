"""Textual Inversion on SDXL (tiny random SDXL, tiny_models.make_sdxl_folder): train.py trains both encoders'
vectors together, writes one safetensors with `clip_l` and `clip_g`, diffusers draws the same image from it with
two load_textual_inversion calls, and widths are refused across families in one line.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mini_ldm.embeddings import EmbeddingError, check_width, read_embedding
from ti.phantoms import write_phantoms

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "<phantom>"
RES = 32
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run(script, *args, cwd=ROOT):
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sdxl_folder):
    """train.py on the tiny SDXL folder: 6 steps, 3 vectors from --init."""
    data = write_phantoms(tmp_path_factory.mktemp("data") / "phantom", count=4)
    out = tmp_path_factory.mktemp("run") / "phantom.safetensors"
    proc = run("train.py", "--device", "cpu", "--data", data, "--model", sdxl_folder, "--vectors", 3, "--init",
               "chest x-ray", "--steps", 6, "--lr", 0.05, "--save-every", 0, "--preview-every", 0,
               "--resolution", RES, "--output", out)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return out


def test_the_file_is_clip_l_and_clip_g_and_both_were_trained(trained, tiny):
    with safe_open(str(trained), "pt") as f:
        keys, meta = sorted(f.keys()), f.metadata()
        clip_l, clip_g = f.get_tensor("clip_l"), f.get_tensor("clip_g")
    assert keys == ["clip_g", "clip_l"] and meta["token"] == TOKEN and meta["family"] == "sdxl"
    assert clip_l.shape == (3, 64) and clip_g.shape == (3, 128)  # the tiny encoders' widths (real: 768, 1280)
    sd = tiny("sdxl", "folder")
    ids = sd.tokenizer.encode("chest x-ray")
    init = [torch.stack([e.embed_tokens(torch.tensor(ids))[i * len(ids) // 3] for i in range(3)])
            for _, e in sd.encoders]
    assert (clip_l - init[0]).abs().max() > 1e-3 and (clip_g - init[1]).abs().max() > 1e-3  # both moved
    emb = read_embedding(trained)
    assert emb.token == TOKEN and emb.widths == (64, 128) and emb.vectors.shape == (3, 192)


def test_diffusers_loads_it_with_two_calls_and_draws_the_same_image(trained, sdxl_folder, tiny):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline
    from safetensors.torch import load_file

    emb = read_embedding(trained)
    prompt, seed = f"a photo of {TOKEN}, chest", 7
    sd = tiny("sdxl", "single")
    options = dict(seed=seed, steps=4, cfg=3.0, scheduler="euler_a", height=64, width=64, progress=False)
    ours = np.asarray(sd.sample(prompt, learned={TOKEN: emb.vectors}, **options)[0][0]).astype(int)
    without = np.asarray(sd.sample("a photo of, chest", **options)[0][0]).astype(int)
    assert np.abs(ours - without).mean() > 1  # the learned token changes the image

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    state = load_file(str(trained))
    pipe.load_textual_inversion(state["clip_l"], token=TOKEN, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token=TOKEN, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    # SDXL's text_encoder_2 config carries the legacy eos_token_id 2, with which transformers reads the pooled
    # vector at the highest token id: an added token's (49408+) rather than end-of-text. We, OpenCLIP and SGM
    # read it at end-of-text; telling transformers the real end-of-text id makes it do the same.
    pipe.text_encoder_2.text_model.eos_token_id = 49407
    image = pipe(prompt, num_inference_steps=4, guidance_scale=3.0, height=64, width=64,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    diff = np.abs(ours - np.asarray(image).astype(int))
    assert diff.max() <= 3 and diff.mean() < 0.1, (diff.max(), diff.mean())


def test_sample_cli_draws_with_it(trained, sdxl_single, tmp_path):
    proc = run("sample.py", "--device", "cpu", "--model", sdxl_single, "--embeddings", trained, "--prompt",
               f"{TOKEN}, chest", "--steps", 2, "--height", 32, "--width", 32, "--seed", 1, "--output",
               tmp_path / "x.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "x.png").is_file()


def test_widths_across_families_are_refused_in_one_line(trained, tmp_path, sd2_single):
    sd1_file = tmp_path / "sd1.safetensors"
    save_file({TOKEN: torch.randn(2, 768)}, str(sd1_file))
    with pytest.raises(EmbeddingError) as e:
        check_width(read_embedding(sd1_file), (768, 1280), "sdxl")
    assert str(e.value) == (f"{sd1_file}: an sd1 embedding ([2, 768]) does not fit the sdxl model, which needs "
                            "clip_l [n, 768] + clip_g [n, 1280]")
    proc = run("sample.py", "--device", "cpu", "--model", sd2_single, "--embeddings", trained, "--prompt", "x",
               "--steps", 1, "--height", 32, "--width", 32, "--output", tmp_path / "y.png")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert str(trained) in line and "clip_l [3, 64] + clip_g [3, 128]" in line and "sd2" in line, line
    assert not (tmp_path / "y.png").exists()


def test_convert_keeps_the_sdxl_layout(trained, tmp_path):
    out = tmp_path / "renamed.safetensors"
    proc = subprocess.run([sys.executable, "-m", "ti.convert", str(trained), str(out), "--token", "<other>"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    again = read_embedding(out)
    assert again.token == "<other>" and again.widths == (64, 128)
    assert torch.equal(again.vectors, read_embedding(trained).vectors)
    refused = subprocess.run([sys.executable, "-m", "ti.convert", str(trained), str(tmp_path / "a.pt")],
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and ".safetensors" in refused.stderr and "Traceback" not in refused.stderr


def test_training_sees_the_pooled_vector_and_each_images_size_and_crop(tiny, monkeypatch, tmp_path):
    """An SDXL step is conditioned on each image's original size and crop (from the latent cache) and on the
    training size; the loss reaches the bigG part of the vectors (through the context and the pooled vector)."""
    import mini_ldm.prompt as trainer_module  # where the added conditioning is built
    from ti.concepts import Concept
    from ti.data import LatentCache
    from ti.train_settings import TrainSettings
    from ti.trainer import Trainer

    seen = []
    real = trainer_module.added_conditioning
    monkeypatch.setattr(trainer_module, "added_conditioning", lambda p, s: seen.append((p, s)) or real(p, s))
    mean = torch.randn(2, 4, 16, 16)  # two 32 px images (the tiny VAE halves)
    geometry = torch.tensor([[300.0, 400, 5, 7], [32, 32, 0, 0]])
    cache = LatentCache(mean, torch.full_like(mean, 0.1), ["", ""], ["a.png", "b.png"], geometry)
    sd = tiny("sdxl", "folder")
    settings = TrainSettings(token=TOKEN, output=tmp_path / "t.safetensors", vectors=2, steps=1, save_every=0,
                             batch=4)
    trainer = Trainer(sd, ["[name]"], settings, [Concept.single(settings, cache=cache)], log=lambda *a: None)
    trainer._batch_loss().backward()
    pooled, sizes = seen[-1]
    assert sizes.shape == (4, 6) and {tuple(r) for r in sizes.tolist()} <= {(300, 400, 5, 7, 32, 32),
                                                                           (32, 32, 0, 0, 32, 32)}
    assert pooled.requires_grad and trainer.vectors.grad[:, 64:].abs().sum() > 0


def test_the_latent_cache_records_original_size_and_crop(tmp_path):
    from PIL import Image

    from ti.data import LatentCache, load_dataset
    Image.new("RGB", (60, 40), (90, 90, 90)).save(tmp_path / "wide.png")  # w 60, h 40 -> resized 48 x 32
    items = load_dataset(tmp_path, 32, crop="center", flip=True)
    assert [it.geometry for it in items] == [(40, 60, 0, 8), (40, 60, 0, 8)]
    cache = LatentCache.build(items, lambda x: (x[:, :4, ::2, ::2], torch.zeros_like(x[:, :4, ::2, ::2])),
                              progress=False)
    cache.save(tmp_path / "cache.safetensors")
    again = LatentCache.load(tmp_path / "cache.safetensors")
    assert again.size_conditioning([0], 32).tolist() == [[40, 60, 0, 8, 32, 32]]


def test_validation_loss_of_an_image_is_its_training_loss(tiny, tmp_path):
    """Issue 22: an SDXL held-out image is validated on its own recorded size and crop, as training conditions
    on them, so its validation loss equals the training loss of the same image, draw and timestep."""
    from ti.concepts import Concept
    from ti.data import LatentCache
    from ti.train_settings import TrainSettings
    from ti.trainer import Trainer
    from ti.validation import held_out_rows, validation_loss

    mean = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))  # one 32 px image
    geometry = torch.tensor([[300.0, 400, 5, 7]])  # cropped from a larger, non-square original
    cache = LatentCache(mean, torch.zeros_like(mean), [""], ["a.png"], geometry)  # std 0: the draw is the mean
    settings = TrainSettings(token=TOKEN, output=tmp_path / "t.safetensors", vectors=2, steps=1, save_every=0,
                             batch=1, val_images=1, val_timesteps=1)
    concept = Concept.single(settings, cache=cache)
    concept.val_cache = cache  # the same image held out
    trainer = Trainer(tiny("sdxl", "folder"), ["[name]"], settings, [concept], log=lambda *a: None)
    # the training step's draws, replayed from its generator: image, latent noise (times std 0), noise, timestep
    g = torch.Generator().set_state(trainer.generator.get_state())
    torch.randint(1, (1,), generator=g)
    torch.randn(mean.shape, generator=g)
    noise = torch.randn(mean.shape, generator=g)
    t = int(torch.randint(len(trainer.alphas_cumprod), (1,), generator=g))
    held = held_out_rows([cache], [t], settings.seed)[0]
    held.noise = noise
    validated = validation_loss(held, lambda *rows: trainer._row_errors(0, *rows))  # before the update
    cache.geometry = None  # the same draw conditioned on the square, uncropped size gives another loss
    square = validation_loss(held, lambda *rows: trainer._row_errors(0, *rows))
    cache.geometry = geometry
    trained = trainer.train_step()[0]
    assert validated == pytest.approx(trained, rel=1e-6, abs=0) and square != pytest.approx(trained, rel=1e-4)
