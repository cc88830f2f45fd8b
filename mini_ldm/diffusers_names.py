"""diffusers' names for the UNet and VAE, mapped onto ours (the original LDM checkpoint's).

diffusers renamed the blocks (down_blocks.L.resnets.I -> input_blocks.N.0) and a few leaves
(norm1 -> in_layers.0); inside the attention blocks the names agree, so only prefixes move.
"""
import re

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def diffusers_unet_name(key: str, num_res_blocks: int, levels: int, attention_levels) -> str:
    """Map one diffusers UNet2DConditionModel key onto our (LDM) name."""
    per_level = num_res_blocks + 1
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        kind, block, part, i, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "down_blocks":
            if part == "downsamplers":
                return f"input_blocks.{(block + 1) * per_level}.0.{rest.replace('conv.', 'op.', 1)}"
            index, sub = 1 + block * per_level + i, 0 if part == "resnets" else 1
            name = f"input_blocks.{index}.{sub}."
        else:
            level = levels - 1 - block
            if part == "upsamplers":
                sub = 2 if level in attention_levels else 1
                return f"output_blocks.{block * per_level + num_res_blocks}.{sub}.{rest}"
            index, sub = block * per_level + i, 0 if part == "resnets" else 1
            name = f"output_blocks.{index}.{sub}."
        return name + (_resnet_leaf(rest) if part == "resnets" else rest)
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        part, i, rest = m.groups()
        if part == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{0 if i == '0' else 2}.{_resnet_leaf(rest)}"
    return key


def _resnet_leaf(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_UNET_RESNET.get(head, head)}.{tail}"


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
             # diffusers before 0.14 stored the VAE attention under these names
             "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}


def diffusers_vae_name(key: str, levels: int) -> str:
    """Map one diffusers AutoencoderKL key onto our (LDM) name."""
    key = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
    m = re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        side, direction, block, part, i, rest = m.groups()
        level = int(block) if direction == "down" else levels - 1 - int(block)
        if part == "resnets":
            return f"{side}.{direction}.{level}.block.{i}.{rest}"
        return f"{side}.{direction}.{level}.{'downsample' if direction == 'down' else 'upsample'}.{rest}"
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        side, part, i, rest = m.groups()
        if part == "resnets":
            return f"{side}.mid.block_{int(i) + 1}.{rest}"
        name, _, leaf = rest.rpartition(".")
        return f"{side}.mid.attn_1.{_VAE_ATTN.get(name, name)}.{leaf}"
    return key
