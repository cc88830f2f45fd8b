"""The tiny test models are only useful if they are laid out like the real ones; check that against diffusers."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from devkit.tiny_models import make_ckpt

FAMILIES = ["sd1", "sd2", "sd2v"]  # fixture name stems


def folder_tensors(folder):
    return {
        "unet": load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")),
        "vae": load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors")),
        "text_encoder": load_file(str(folder / "text_encoder" / "model.safetensors")),
    }


def config(folder, part):
    return json.loads((folder / part / "config.json").read_text())


def assert_same(converted, expected):
    assert set(converted) == set(expected)
    for k, v in expected.items():
        assert converted[k].shape == v.shape, k
        assert torch.equal(converted[k], v), k


@pytest.mark.parametrize("stem", FAMILIES)
def test_single_file_round_trips_through_diffusers_converters(stem, request):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    folder, single = request.getfixturevalue(f"{stem}_folder"), request.getfixturevalue(f"{stem}_single")
    ckpt, want = load_file(str(single)), folder_tensors(folder)

    assert_same(convert_ldm_unet_checkpoint(ckpt, config(folder, "unet")), want["unet"])
    assert_same(convert_ldm_vae_checkpoint(ckpt, config(folder, "vae")), want["vae"])

    text_cfg = config(folder, "text_encoder")
    if stem == "sd1":
        text = convert_ldm_clip_checkpoint(ckpt)
        assert torch.equal(text.pop("text_model.embeddings.position_ids"), torch.arange(77)[None])
    else:
        model = CLIPTextModel(CLIPTextConfig(**text_cfg))
        text = convert_open_clip_checkpoint(model, ckpt)
        # diffusers drops the unused last block by its real index (23); ours is the one past the folder's layers.
        extra = f"text_model.encoder.layers.{text_cfg['num_hidden_layers']}."
        assert sum(k.startswith(extra) for k in text) == 16
        text = {k: v for k, v in text.items() if not k.startswith(extra)}
    assert_same(text, want["text_encoder"])


@pytest.mark.parametrize("stem", FAMILIES)
def test_diffusers_from_single_file_matches_folder(stem, request):
    from diffusers import StableDiffusionPipeline

    folder, single = request.getfixturevalue(f"{stem}_folder"), request.getfixturevalue(f"{stem}_single")
    pipe = StableDiffusionPipeline.from_single_file(str(single), config=str(folder), local_files_only=True)
    want = folder_tensors(folder)
    for part in ("unet", "vae", "text_encoder"):
        got = getattr(pipe, part).state_dict()
        for k, v in want[part].items():
            assert torch.equal(got[k.removeprefix("text_model.") if k not in got else k], v), (part, k)


@pytest.mark.parametrize("stem", ["sd1", "sd2v"])
def test_pipeline_loads_and_makes_an_image(stem, request):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(request.getfixturevalue(f"{stem}_folder"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.safety_checker is None
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if stem == "sd2v" else "epsilon")
    image = pipe("a photo of a cat", num_inference_steps=2, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()
    assert image.std() > 0.01
    assert ((image > 0.001) & (image < 0.999)).mean() > 0.9  # not saturated


@pytest.mark.parametrize("stem", ["sd1", "sd2"])
def test_tokenizer_matches_clip(stem, request):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(request.getfixturevalue(f"{stem}_folder") / "tokenizer")
    ids = tok("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(ids) == 77 and ids[-1] == (49407 if stem == "sd1" else 0)
    assert len(tok) == 49408


@pytest.mark.parametrize("stem", FAMILIES)
def test_every_parameter_is_random(stem, request):
    folder, single = request.getfixturevalue(f"{stem}_folder"), request.getfixturevalue(f"{stem}_single")
    tensors = {f"{part}/{k}": v for part, sd in folder_tensors(folder).items() for k, v in sd.items()}
    tensors.update({k: v for k, v in load_file(str(single)).items() if k.startswith(("model.", "first_", "cond_"))})
    for k, v in tensors.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all() and (v != 0).any(), k
            assert v.numel() == 1 or v.std() > 1e-3, k  # not a constant fill (norm weights of 1, biases of 0)


@pytest.mark.parametrize("stem", FAMILIES)
def test_single_file_layout(stem, request):
    folder, single = request.getfixturevalue(f"{stem}_folder"), request.getfixturevalue(f"{stem}_single")
    sd, want = load_file(str(single)), folder_tensors(folder)
    count = lambda prefix: sum(k.startswith(prefix) for k in sd)  # noqa: E731
    unet, vae = "model.diffusion_model.", "first_stage_model."
    assert count(unet) == len(want["unet"]) and count(vae) == len(want["vae"])
    for key in ("input_blocks.3.0.op.weight", "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight",
                "middle_block.1.proj_in.weight", "input_blocks.4.0.skip_connection.weight", "time_embed.2.bias",
                "out.2.weight"):
        assert unet + key in sd, key
    assert sd[vae + "encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    for key in ("decoder.up.1.upsample.conv.weight", "encoder.down.0.downsample.conv.weight",
                "encoder.down.1.block.0.nin_shortcut.weight", "quant_conv.weight", "post_quant_conv.weight"):
        assert vae + key in sd, key
    layers = config(folder, "text_encoder")["num_hidden_layers"]
    if stem == "sd1":
        assert count("cond_stage_model.transformer.text_model.") == len(want["text_encoder"]) + 1  # + position_ids
    else:
        oc = "cond_stage_model.model."
        assert count(oc) == 6 + 12 * (layers + 1)  # one block more than the folder's text encoder
        assert oc + f"transformer.resblocks.{layers}.attn.in_proj_weight" in sd
        width = config(folder, "text_encoder")["hidden_size"]
        assert sd[oc + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * width, width)
        assert sd[oc + "positional_embedding"].shape == (77, width)
    assert {"alphas_cumprod", "betas", "model_ema.decay"} <= set(sd)
    assert sd["alphas_cumprod"].shape == (1000,)
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "model_ema."))
               or "." not in k for k in sd)


def test_ckpt_holds_the_same_tensors(sd1_folder, sd1_single, tmp_path):
    ckpt = torch.load(make_ckpt(sd1_folder, tmp_path / "v1-5-pruned-emaonly.ckpt"), weights_only=True)
    assert_same(ckpt["state_dict"], load_file(str(sd1_single)))
