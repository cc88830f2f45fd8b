"""Model families as data: one record per family (SD 1.x, SD 2.x, SDXL base) with everything that differs.

The networks (unet.py, clip.py, vae.py) take their shapes from a config; what the tensor shapes cannot tell
lives in the family's record: which text encoders it has and where their weights are, how its tokenizers pad,
which hidden state makes the context, whether one encoder gives a pooled vector, the attention heads, the VAE
scale, the native size, the scheduler a single file implies, and two sampling rules (an empty negative prompt
is the zero conditioning; SDXL's size conditioning). checkpoint.py decides the family once, at load time, and
every other module asks the record. A family that differs only in these fields is a new record, no new code.

The config readers at the end turn a record plus the tensor shapes (and a diffusers folder's config.json
values, where there is one) into the networks' configs.
"""
import re
from dataclasses import dataclass

from .clip import TextConfig
from .unet import UNetConfig
from .vae import VAEConfig


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a family: where its weights are and how the family reads it."""

    file_prefix: str  # its tensors' prefix in a single file
    open_clip: bool  # OpenCLIP names in a single file (transformer.resblocks.N...), else Hugging Face CLIP names
    folder: str  # its subfolder in a diffusers folder
    tokenizer_folder: str
    pad_id: int  # the tokenizer pads the 77-token window with this id: end-of-text (49407) or "!" (0)
    activation: str  # "quick_gelu" (OpenAI CLIP) or "gelu" (OpenCLIP)
    dropped_file_layers: int = 0  # blocks a single file holds but the context never reaches (SD2: block 24)
    context_skip: int = 0  # the context is the output of the block this many before the last (SDXL: 1)
    context_norm: bool = True  # the context goes through the final LayerNorm (SD 1/2; not SDXL)
    pooled: bool = False  # gives a pooled vector through text_projection (SDXL's bigG)
    what: str = "text encoder"  # its name in messages


@dataclass(frozen=True)
class Family:
    """What differs between model families; `name` is what files and messages call it."""

    name: str  # "sd1", "sd2", "sdxl"
    label: str  # "SD 1.x": what messages call it ("an SD 1.x checkpoint")
    encoders: tuple  # TextEncoderSpec, in the order their contexts are concatenated
    unet_heads: int  # attention heads per level a single file implies; 0: a head dim of 64 at every level
    upcast_in_half: bool  # compute attention in fp32 under fp16/bf16 (SD2's logits overflow fp16)
    vae_scale: float  # latents are multiplied by this (a folder's vae/config.json may say otherwise)
    native_size: int  # pixels, for a single file (a folder's unet config says it in latents)
    native_size_v: int  # the same for a v-prediction single file (SD 2's 768-v)
    v_file_name: str  # a pattern: a single file whose name has it predicts v ("": only the usual v-pred names)
    scheduler: dict  # the scheduler config a single file implies ({}: SD's own defaults)
    zero_empty_negative: bool  # an empty negative prompt is the zero conditioning (diffusers' force_zeros_...)
    size_conditioning: bool  # the UNet also takes the pooled vector and six size numbers (SDXL's `y`)
    # How a checkpoint shows it is of this family (none: the fallback, SD 1): a single file has a key that starts
    # with one of `file_marks`; a diffusers folder has one of `folder_marks`, (part, config.json key, value).
    file_marks: tuple = ()
    folder_marks: tuple = ()


# The single files' prefixes of the parts every family has.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

SD1 = Family(
    name="sd1", label="SD 1.x",
    encoders=(TextEncoderSpec("cond_stage_model.transformer.", False, "text_encoder", "tokenizer", 49407,
                              "quick_gelu"),),
    unet_heads=8, upcast_in_half=False, vae_scale=0.18215, native_size=512, native_size_v=512, v_file_name="",
    scheduler={}, zero_empty_negative=False, size_conditioning=False)

SD2 = Family(
    name="sd2", label="SD 2.x",
    # The file holds all 24 OpenCLIP blocks; SD2 reads the penultimate through ln_final, so we build 23.
    encoders=(TextEncoderSpec("cond_stage_model.model.", True, "text_encoder", "tokenizer", 0, "gelu",
                              dropped_file_layers=1),),
    unet_heads=0, upcast_in_half=True, vae_scale=0.18215, native_size=512, native_size_v=768, v_file_name="768",
    scheduler={}, zero_empty_negative=False, size_conditioning=False,
    file_marks=("cond_stage_model.model.",), folder_marks=(("text_encoder", "hidden_act", "gelu"),))

# scheduler/scheduler_config.json of stabilityai/stable-diffusion-xl-base-1.0, for single files
SDXL_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
                  "steps_offset": 1, "timestep_spacing": "leading", "interpolation_type": "linear"}

SDXL = Family(
    name="sdxl", label="SDXL base",
    # Both encoders' penultimate blocks without the final norm, side by side (768 + 1280 = 2048)
    encoders=(TextEncoderSpec("conditioner.embedders.0.transformer.", False, "text_encoder", "tokenizer", 49407,
                              "quick_gelu", context_skip=1, context_norm=False, what="CLIP ViT-L text encoder"),
              TextEncoderSpec("conditioner.embedders.1.model.", True, "text_encoder_2", "tokenizer_2", 0, "gelu",
                              context_skip=1, context_norm=False, pooled=True, what="OpenCLIP bigG text encoder")),
    unet_heads=0, upcast_in_half=False, vae_scale=0.13025, native_size=1024, native_size_v=1024, v_file_name="",
    scheduler=SDXL_SCHEDULER, zero_empty_negative=True, size_conditioning=True,
    # its UNet's added-conditioning layer, or any SGM `conditioner.` (a partial file is then refused as SDXL's)
    file_marks=(UNET_PREFIX + "label_emb.", "conditioner."),
    folder_marks=(("unet", "addition_embed_type", "text_time"),))

FAMILIES = (SDXL, SD2, SD1)  # the first whose marks a checkpoint has is its family; SD 1 has none: the fallback
REFINER_PREFIX = "conditioner.embedders.0.model."  # the SDXL refiner has only the bigG embedder


def single_file_family(keys) -> Family:
    """The family of a single file, from its tensor names."""
    return next(f for f in FAMILIES if not f.file_marks or any(k.startswith(f.file_marks) for k in keys))


def folder_family(configs: dict) -> Family:
    """The family of a diffusers folder, from its parts' config.json files ({part: config})."""
    return next(f for f in FAMILIES if not f.folder_marks or
                any(configs.get(part, {}).get(key) == value for part, key, value in f.folder_marks))


def native_size(family: Family, prediction: str, latent_size: int | None = None, downscale: int = 8) -> int:
    """The image size (pixels) the model was trained at: a folder's unet config says so in latents
    (sample_size); a single file cannot, and only SD2's v models (768-v) were trained above 512."""
    if latent_size is not None:
        return latent_size * downscale
    return family.native_size_v if prediction == "v" else family.native_size


# --- configs from tensor shapes ------------------------------------------------------------------


def count(keys, pattern) -> int:
    """1 + the largest number the pattern's group matches in `keys` (0 if none): blocks, layers, levels."""
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def unet_config(src, family: Family, heads=None, upcast=False) -> UNetConfig:
    keys = src.keys()
    base_channels = src.shape("input_blocks.0.0.weight")[0]
    levels = 1 + sum(1 for k in keys if re.match(r"input_blocks\.\d+\.0\.op\.weight$", k))
    blocks = count(keys, r"input_blocks\.(\d+)\.")
    # input_blocks: conv_in, then per level the ResBlocks, and a Downsample on all levels but the last
    res_blocks_per_level = (blocks - 1 - (levels - 1)) // levels
    first = [1 + level * (res_blocks_per_level + 1) for level in range(levels)]  # each level's first ResBlock
    mult = tuple(src.shape(f"input_blocks.{b}.0.in_layers.2.weight")[0] // base_channels for b in first)
    attn = tuple(level for level, b in enumerate(first) if f"input_blocks.{b}.1.proj_in.weight" in keys)
    context = src.shape("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
    depth = tuple(count(keys, rf"input_blocks\.{b}\.1\.transformer_blocks\.(\d+)\.") for b in first)
    adm = src.shape("label_emb.0.0.weight")[1] if "label_emb.0.0.weight" in keys else 0  # SDXL
    if heads is None:  # not stored in a single file: the family's fixed count, or a head dim of 64
        heads = [family.unet_heads] * levels if family.unet_heads else [m * base_channels // 64 for m in mult]
    return UNetConfig(in_channels=src.shape("input_blocks.0.0.weight")[1], out_channels=src.shape("out.2.weight")[0],
                      model_channels=base_channels, channel_mult=mult, num_res_blocks=res_blocks_per_level,
                      attention_levels=attn, heads=tuple(heads), context_dim=context,
                      linear_proj=len(src.shape("middle_block.1.proj_in.weight")) == 2, upcast_attention=upcast,
                      transformer_depth=depth,
                      middle_depth=count(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\."),
                      adm_in_channels=adm)


def vae_config(src, scale: float) -> VAEConfig:
    keys = src.keys()
    ch = src.shape("encoder.conv_in.weight")[0]
    levels = count(keys, r"encoder\.down\.(\d+)\.")
    mult = tuple(src.shape(f"encoder.down.{level}.block.0.conv1.weight")[0] // ch for level in range(levels))
    return VAEConfig(ch=ch, ch_mult=mult, num_res_blocks=count(keys, r"encoder\.down\.0\.block\.(\d+)\."),
                     z_channels=src.shape("post_quant_conv.weight")[0], scale=scale)


def vae_latent_channels(src) -> int:
    """The latent channels of a VAE's tensors (LDM names), read where every VAE layout has them: the decoder's
    first convolution (a Flux/SD3 VAE has no post_quant_conv)."""
    return src.shape("decoder.conv_in.weight")[1]


def text_config(src, spec: TextEncoderSpec, layers: int, heads=None, activation=None) -> TextConfig:
    """A text encoder's config from its tensors (Hugging Face names) and the family's way of reading it."""
    vocab, width = src.shape("embeddings.token_embedding.weight")
    return TextConfig(vocab_size=vocab, max_length=src.shape("embeddings.position_embedding.weight")[0],
                      width=width, layers=layers, heads=heads or width // 64,
                      mlp_width=src.shape("encoder.layers.0.mlp.fc1.weight")[0],
                      activation=activation or spec.activation, context_skip=spec.context_skip,
                      context_norm=spec.context_norm,
                      projection_dim=src.shape("text_projection.weight")[0] if spec.pooled else 0)
