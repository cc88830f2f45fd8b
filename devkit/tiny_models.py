"""Tiny random Stable Diffusion models in the real on-disk layouts, made at test time.

    folder = make_diffusers_folder(tmp / "sd2", family="sd2", prediction="v_prediction", seed=2)
    ckpt = make_single_file(folder, tmp / "v2-1_768-ema-pruned.safetensors")

`make_diffusers_folder` writes what a public diffusers repo ships (unet/, vae/, text_encoder/, tokenizer/,
scheduler/, model_index.json) so that `StableDiffusionPipeline.from_pretrained(folder)` loads it offline.
`make_single_file` writes the same weights as one CompVis/LDM-layout file (`model.diffusion_model.*`,
`first_stage_model.*`, `cond_stage_model.*` plus the schedule buffers and `model_ema.*` extras real files
carry). The converter here is test-only; tests check it against diffusers' own single-file converters.

The configs copy SD's structure at a fraction of the width:
  UNet   3 levels, 2 res blocks each, attention on all but the last level, GroupNorm(32).
         sd1: channels (32, 64, 64), 8 heads, 1x1-conv proj_in/out, context 128.
         sd2: channels (64, 128, 128), heads (1, 2, 2) = head dim 64, Linear proj_in/out, context 192.
  VAE    channels (32, 64), 2 res blocks per level, 4 latent channels, scale 0.18215 (downsamples by 2).
  Text   vocab 49408, 77 positions, 64 per head (the single-file loader infers heads = width // 64).
         sd1: width 128, 2 layers, quick_gelu.   sd2: width 192, 2 layers (+1 unused block in the single
         file, as real SD2 files hold 24 blocks and diffusers' text_encoder 23), gelu.

SDXL (`make_sdxl_folder`, `make_sdxl_single_file`) keeps the real SDXL layout at tiny widths:
  UNet   channels (32, 64, 128), no attention at level 0, transformer depth 2 at level 1 and 3 at level 2 and
         in the middle (real: 2 and 10), head dim 64, Linear proj, context 64 + 128 = 192, added conditioning
         `add_embedding`/`label_emb` 128 + 6 * 256 = 1664 (real: 1280 + 1536 = 2816).
  VAE    as above with scale 0.13025.
  Text   CLIP-L: width 64, 3 layers, quick_gelu (text_encoder, pads with EOS); bigG: width 128, 3 layers, gelu,
         text_projection 128 (text_encoder_2 = CLIPTextModelWithProjection, pads with "!").
  Single file: SGM names (conditioner.embedders.0.transformer.text_model.*, conditioner.embedders.1.model.*).
"""
import gzip
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

VOCAB_GZ = Path(__file__).resolve().parents[1] / "mini_ldm" / "vocab" / "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 48_894
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

TEXT = {  # family -> (width, layers, activation)
    "sd1": (128, 2, "quick_gelu"),
    "sd2": (192, 2, "gelu"),
}


# --- model construction ----------------------------------------------------------------------------


def _unet(family, prediction):
    from diffusers import UNet2DConditionModel

    sd2 = family == "sd2"
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128, 128) if sd2 else (32, 64, 64),
        layers_per_block=2,
        norm_num_groups=32,
        cross_attention_dim=TEXT[family][0],
        # SD1 configs say 8 and mean 8 heads; SD2 configs list heads per level (channels // 64).
        attention_head_dim=(1, 2, 2) if sd2 else 8,
        use_linear_projection=sd2,
        upcast_attention=sd2 and prediction == "v_prediction",  # as in SD2.1-768's config
    )


def _vae(scale=0.18215):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=scale,
    )


def _text_config(family):
    from transformers import CLIPTextConfig

    width, layers, act = TEXT[family]
    # pad/bos/eos 1/0/2 are the (legacy) values the public SD repos' text_encoder/config.json carry.
    return CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_size=width, intermediate_size=4 * width,
        num_hidden_layers=layers, num_attention_heads=width // 64, hidden_act=act, layer_norm_eps=1e-5,
        projection_dim=width, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )


def _random_like(p, gen, kind):
    """A random tensor shaped like `p`: norms near 1, biases and embeddings small, weights ~ 1/sqrt(fan_in)."""
    noise = torch.randn(p.shape, generator=gen)
    if kind == "norm_weight":
        return 1.0 + 0.1 * noise
    if kind == "embedding":
        return 0.02 * noise
    if p.ndim == 1:
        return 0.05 * noise
    return noise / math.sqrt(p[0].numel())


def randomize_(model, seed):
    """Overwrite every parameter (norm weights and biases included) with seeded random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            for name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, (nn.GroupNorm, nn.LayerNorm)) and name == "weight":
                    kind = "norm_weight"
                elif isinstance(mod, nn.Embedding):
                    kind = "embedding"
                else:
                    kind = "other"
                p.copy_(_random_like(p, gen, kind))
    return model


# --- tokenizer --------------------------------------------------------------------------------------


def _byte_alphabet():
    """CLIP/GPT-2's 256 printable stand-ins for bytes, in vocabulary order ("!" is id 0)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def _write_tokenizer(dst: Path, family):
    lines = gzip.open(VOCAB_GZ, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 1 + N_MERGES]
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + [m.replace(" ", "") for m in merges] + [BOS, EOS]
    assert len(tokens) == 49408
    dst.mkdir(parents=True)
    (dst / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    pad = EOS if family == "sd1" else "!"  # SD2's OpenCLIP pads with id 0
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad}
    _write_json(dst / "special_tokens_map.json", specials)
    _write_json(dst / "tokenizer_config.json", {
        **specials, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
        "model_max_length": 77, "tokenizer_class": "CLIPTokenizer",
    })


# --- the diffusers folder ---------------------------------------------------------------------------


def _write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2) + "\n")


def scheduler_config(prediction="epsilon"):
    """scheduler/scheduler_config.json as the public SD 1.5 / 2.x repos ship it."""
    return {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.10.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": prediction,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    }


def make_diffusers_folder(root, family="sd1", prediction="epsilon", seed=0) -> Path:
    """Write a tiny random SD model as a diffusers folder at `root` (created; must not exist)."""
    from transformers import CLIPTextModel

    assert family in ("sd1", "sd2") and prediction in ("epsilon", "v_prediction")
    root = Path(root)
    root.mkdir(parents=True)
    randomize_(_unet(family, prediction), seed).save_pretrained(root / "unet")
    vae = randomize_(_vae(), seed + 1)
    with torch.no_grad():  # keep decoded pixels mostly inside [-1, 1] so images are not saturated
        vae.decoder.conv_out.weight.mul_(0.3)
    vae.save_pretrained(root / "vae")

    cfg = _text_config(family)
    text = randomize_(CLIPTextModel(cfg), seed + 2)
    cfg.save_pretrained(root / "text_encoder")
    # transformers >= 5.6 flattens CLIPTextModel's own names; public files keep the `text_model.` prefix.
    tensors = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in text.state_dict().items()}
    save_file({k: v.contiguous() for k, v in tensors.items() if not k.endswith("position_ids")},
              str(root / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})

    _write_tokenizer(root / "tokenizer", family)
    (root / "scheduler").mkdir()
    _write_json(root / "scheduler" / "scheduler_config.json", scheduler_config(prediction))
    _write_json(root / "model_index.json", {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.10.0.dev0",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    return root


def family_of(folder) -> str:
    """"sd2" if the folder's text encoder is OpenCLIP-like (gelu), else "sd1"."""
    cfg = json.loads((Path(folder) / "text_encoder" / "config.json").read_text())
    return "sd2" if cfg["hidden_act"] == "gelu" else "sd1"


# --- diffusers -> LDM names -------------------------------------------------------------------------

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_blocks(cfg):
    """diffusers module prefix -> (LDM prefix, renames of the parts below it)."""
    n, levels = cfg["layers_per_block"], len(cfg["block_out_channels"])
    m = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
         "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
         "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
         "mid_block.resnets.1": "middle_block.2"}
    for lv in range(levels):
        for j in range(n):  # input_blocks: [ResBlock, SpatialTransformer] per layer, then [Downsample]
            m[f"down_blocks.{lv}.resnets.{j}"] = f"input_blocks.{1 + lv * (n + 1) + j}.0"
            m[f"down_blocks.{lv}.attentions.{j}"] = f"input_blocks.{1 + lv * (n + 1) + j}.1"
        m[f"down_blocks.{lv}.downsamplers.0.conv"] = f"input_blocks.{1 + lv * (n + 1) + n}.0.op"
        for j in range(n + 1):  # output_blocks: [ResBlock, SpatialTransformer?, Upsample?]
            m[f"up_blocks.{lv}.resnets.{j}"] = f"output_blocks.{lv * (n + 1) + j}.0"
            m[f"up_blocks.{lv}.attentions.{j}"] = f"output_blocks.{lv * (n + 1) + j}.1"
        has_attn = cfg["up_block_types"][lv].startswith("CrossAttn")
        m[f"up_blocks.{lv}.upsamplers.0.conv"] = f"output_blocks.{lv * (n + 1) + n}.{2 if has_attn else 1}.conv"
    return {k: (v, UNET_RESNET if ".resnets." in k else {}) for k, v in m.items()}


def _vae_blocks(cfg):
    levels, n = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    m = {"quant_conv": ("quant_conv", {}), "post_quant_conv": ("post_quant_conv", {})}
    for side in ("encoder", "decoder"):
        m[f"{side}.conv_in"] = (f"{side}.conv_in", {})
        m[f"{side}.conv_out"] = (f"{side}.conv_out", {})
        m[f"{side}.conv_norm_out"] = (f"{side}.norm_out", {})
        m[f"{side}.mid_block.resnets.0"] = (f"{side}.mid.block_1", VAE_RESNET)
        m[f"{side}.mid_block.resnets.1"] = (f"{side}.mid.block_2", VAE_RESNET)
        m[f"{side}.mid_block.attentions.0"] = (f"{side}.mid.attn_1", VAE_ATTN)
    for i in range(levels):
        for j in range(n):
            m[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}", VAE_RESNET)
        m[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (f"encoder.down.{i}.downsample.conv", {})
        up = levels - 1 - i  # LDM numbers decoder levels from the highest resolution, diffusers from the lowest
        for j in range(n + 1):
            m[f"decoder.up_blocks.{i}.resnets.{j}"] = (f"decoder.up.{up}.block.{j}", VAE_RESNET)
        m[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{up}.upsample.conv", {})
    return m


def _rename(tensors, blocks, prefix):
    out = {}
    for key, t in tensors.items():
        parts = key.split(".")
        heads = [".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in blocks]
        if not heads:
            raise KeyError(f"no LDM name known for {key}")
        head = heads[0]
        ldm_head, renames = blocks[head]
        rest = key[len(head) + 1:]
        for old, new in renames.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old):]
        out[prefix + ldm_head + "." + rest] = t
    return out


def _open_clip(tensors, width, n_layers, gen, extra_block=True):
    """HF CLIP text tensors (`text_model.*`) -> OpenCLIP names, plus (SD2) one extra random final block.
    OpenCLIP's text_projection [C, P] is used as x @ P: the transpose of HF's text_projection.weight."""
    projection = tensors.get("text_projection.weight")
    sd = {"token_embedding.weight": tensors["text_model.embeddings.token_embedding.weight"],
          "positional_embedding": tensors["text_model.embeddings.position_embedding.weight"],
          "ln_final.weight": tensors["text_model.final_layer_norm.weight"],
          "ln_final.bias": tensors["text_model.final_layer_norm.bias"],
          "text_projection": (torch.randn(width, width, generator=gen) / math.sqrt(width) if projection is None
                              else projection.T.contiguous()),
          "logit_scale": torch.tensor(math.log(1 / 0.07))}
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(n_layers + 1 if extra_block else n_layers):
        hf, oc = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        if i == n_layers:  # SD2 files hold one more block than SD uses (it reads the penultimate)
            like = {k[len(f"text_model.encoder.layers.{i - 1}."):]: v for k, v in tensors.items()
                    if k.startswith(f"text_model.encoder.layers.{i - 1}.")}
            layer = {k: _random_like(v, gen, "norm_weight" if "norm" in k and k.endswith("weight") else "other")
                     for k, v in like.items()}
        else:
            layer = {k[len(hf):]: v for k, v in tensors.items() if k.startswith(hf)}
        for kind in ("weight", "bias"):
            sd[oc + f"attn.in_proj_{kind}"] = torch.cat([layer[f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
            for old, new in names.items():
                sd[oc + f"{new}.{kind}"] = layer[f"{old}.{kind}"]
    return sd


def _schedule_buffers():
    """The DDPM buffers LatentDiffusion saves with every checkpoint (scaled_linear, 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    buffers = {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - ac).log(), "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(), "posterior_variance": post_var,
        "posterior_log_variance_clipped": torch.cat([post_var[1:2], post_var[1:]]).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1 - ac),
        "posterior_mean_coef2": (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac),
    }
    return {k: v.float() for k, v in buffers.items()}


def single_file_state_dict(folder, seed=0) -> dict:
    """The folder's weights under the original LDM/CompVis single-file names, with the usual extras."""
    folder = Path(folder)
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    text_cfg = json.loads((folder / "text_encoder" / "config.json").read_text())
    sd = {}
    sd.update(_rename(load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")),
                      _unet_blocks(unet_cfg), "model.diffusion_model."))
    vae = _rename(load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors")),
                  _vae_blocks(vae_cfg), "first_stage_model.")
    for k, v in vae.items():  # the VAE's mid attention is stored as 1x1 convs
        if ".mid.attn_1." in k and k.endswith("weight") and ".norm." not in k:
            vae[k] = v[:, :, None, None]
    sd.update(vae)
    text = load_file(str(folder / "text_encoder" / "model.safetensors"))
    if family_of(folder) == "sd1":
        sd.update({"cond_stage_model.transformer." + k: v for k, v in text.items()})
        sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    else:
        gen = torch.Generator().manual_seed(seed)
        oc = _open_clip(text, text_cfg["hidden_size"], text_cfg["num_hidden_layers"], gen)
        sd.update({"cond_stage_model.model." + k: v for k, v in oc.items()})
    sd.update(_schedule_buffers())
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    return {k: v.contiguous() for k, v in sd.items()}


def make_single_file(folder, out_path, seed=0) -> Path:
    """Write the folder's weights as one LDM-layout .safetensors (the layout of v1-5-pruned-emaonly etc.)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(single_file_state_dict(folder, seed), str(out_path))
    return out_path


def make_ckpt(folder, out_path, seed=0) -> Path:
    """The same as a pickled .ckpt ({"state_dict": ...}), as the original releases were distributed."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": 0, "state_dict": single_file_state_dict(folder, seed)}, out_path)
    return out_path


# --- SDXL -------------------------------------------------------------------------------------------

SDXL_TEXT = ((64, 3, "quick_gelu"), (128, 3, "gelu"))  # CLIP ViT-L, OpenCLIP bigG: width, layers, activation
SDXL_PROJECTION = 128


def _sdxl_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128), layers_per_block=2, norm_num_groups=32,
        transformer_layers_per_block=(1, 2, 3),
        cross_attention_dim=SDXL_TEXT[0][0] + SDXL_TEXT[1][0],
        attention_head_dim=(1, 1, 2),  # as in SDXL's config ([5, 10, 20]): the number of heads, head dim 64
        use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=SDXL_PROJECTION + 6 * 256,
    )


def _sdxl_text_config(k):
    from transformers import CLIPTextConfig

    width, layers, act = SDXL_TEXT[k]
    return CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_size=width, intermediate_size=4 * width,
        num_hidden_layers=layers, num_attention_heads=width // 64, hidden_act=act, layer_norm_eps=1e-5,
        projection_dim=SDXL_PROJECTION if k == 1 else width, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )


def sdxl_scheduler_config():
    """scheduler/scheduler_config.json of stabilityai/stable-diffusion-xl-base-1.0."""
    return {"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
            "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
            "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
            "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False}


def _save_text_encoder(model, cfg, folder):
    cfg.save_pretrained(folder)
    tensors = {k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v
               for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in tensors.items() if not k.endswith("position_ids")},
              str(folder / "model.safetensors"), metadata={"format": "pt"})


def make_sdxl_folder(root, seed=0) -> Path:
    """A tiny random SDXL base as a diffusers folder (StableDiffusionXLPipeline.from_pretrained loads it)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    root = Path(root)
    root.mkdir(parents=True)
    randomize_(_sdxl_unet(), seed).save_pretrained(root / "unet")
    vae = randomize_(_vae(scale=0.13025), seed + 1)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.3)
    vae.save_pretrained(root / "vae")
    for k, (name, cls) in enumerate((("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection))):
        cfg = _sdxl_text_config(k)
        _save_text_encoder(randomize_(cls(cfg), seed + 2 + k), cfg, root / name)
    _write_tokenizer(root / "tokenizer", "sd1")  # pads with end-of-text
    _write_tokenizer(root / "tokenizer_2", "sd2")  # pads with "!" (id 0)
    (root / "scheduler").mkdir()
    _write_json(root / "scheduler" / "scheduler_config.json", sdxl_scheduler_config())
    _write_json(root / "model_index.json", {
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0.dev0",
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    })
    return root


def sdxl_single_file_state_dict(folder) -> dict:
    """The SDXL folder's weights under the SGM single-file names (sd_xl_base_1.0.safetensors' layout)."""
    folder = Path(folder)
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    blocks = _unet_blocks(unet_cfg)
    blocks["add_embedding.linear_1"] = ("label_emb.0.0", {})
    blocks["add_embedding.linear_2"] = ("label_emb.0.2", {})
    sd = _rename(load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")), blocks,
                 "model.diffusion_model.")
    vae = _rename(load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors")),
                  _vae_blocks(vae_cfg), "first_stage_model.")
    for k, v in vae.items():
        if ".mid.attn_1." in k and k.endswith("weight") and ".norm." not in k:
            vae[k] = v[:, :, None, None]
    sd.update(vae)
    clip = load_file(str(folder / "text_encoder" / "model.safetensors"))
    sd.update({"conditioner.embedders.0.transformer." + k: v for k, v in clip.items()})
    sd["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    bigg = load_file(str(folder / "text_encoder_2" / "model.safetensors"))
    oc = _open_clip(bigg, SDXL_TEXT[1][0], SDXL_TEXT[1][1], None, extra_block=False)
    sd.update({"conditioner.embedders.1.model." + k: v for k, v in oc.items()})
    sd.update(_schedule_buffers())
    return {k: v.contiguous() for k, v in sd.items()}


def make_sdxl_single_file(folder, out_path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sdxl_single_file_state_dict(folder), str(out_path))
    return out_path
