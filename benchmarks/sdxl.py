#!/usr/bin/env python
"""SDXL side by side with diffusers on CPU, on one random-weight SDXL (benchmarks/common.py: random_sdxl):

    python benchmarks/sdxl.py --what sample --size reduced --resolution 512   # one CFG UNet step, + added cond
    python benchmarks/sdxl.py --what ti --size reduced --resolution 256       # one TI training step
    python benchmarks/sdxl.py --what memory                                   # activations of a 1024 px TI step

sample  one denoising step with classifier-free guidance (latent batch 2, pooled text + size conditioning):
        our UNet vs UNet2DConditionModel, same weights; the outputs are compared once.
ti      one Textual Inversion step: ours (ti.trainer.Trainer on SDXL: the token's CLIP-L and bigG vectors trained
        together, latents cached) vs the loop body of diffusers' examples/textual_inversion/textual_inversion_sdxl.py
        with its defaults, rebuilt here with diffusers/transformers components: its data loader (file, RGB,
        random crop, original size and crop recorded, bicubic resize, flip, both tokenizers), VAE encode, noise,
        timesteps, add_noise, CLIP-L hidden state -2 with its whole token-embedding matrix trainable, bigG frozen
        (hidden state -2 and pooled), add_time_ids, UNet, MSE, backward, AdamW over CLIP-L's embedding matrix,
        restore the frozen rows. (That script trains the CLIP-L vectors only; ours trains both encoders'.)
memory  the tensors autograd keeps for the backward pass of one TI step of the FULL SDXL UNet in bf16, counted
        exactly by running it on PyTorch's meta device (no memory, no compute) with saved_tensors_hooks, at
        256/512/1024 px, with and without gradient checkpointing; weights and attention-probability matrices
        (which GPU fused attention does not keep) are counted apart. benchmarks/README.md turns it into the
        estimate for a 24 GB card.
Timing: ti_step.measure (warm-up, then k1- and k2-step runs in ABBA order, marginal seconds per step).
"""
import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, command_line, count_params, random_sdxl, run_facts, use_threads, write_json  # noqa: E402
from ti_step import DIFFUSERS_TEMPLATES, INIT_TOKEN, TOKEN, OursTI, measure, write_images  # noqa: E402


# --------------------------------------------------------------------------- sampling: one CFG UNet step

def sample_sides(folder: Path, resolution: int, seed: int):
    import mini_ldm
    from diffusers import UNet2DConditionModel
    from mini_ldm.unet import added_conditioning

    ours = mini_ldm.load(folder, device="cpu", dtype="fp32").unet
    theirs = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    h = resolution // 8
    x, context = torch.randn(2, 4, h, h, generator=g), torch.randn(2, 77, 2048, generator=g)
    pooled = torch.randn(2, 1280, generator=g)
    sizes = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * 2, dtype=torch.float32)
    t = torch.tensor([500, 500])
    added = {"text_embeds": pooled, "time_ids": sizes}

    @torch.no_grad()
    def step_ours():  # the size embedding is part of the step, as in sampling
        return float(ours(x, t, context, added_conditioning(pooled, sizes))[0, 0, 0, 0])

    @torch.no_grad()
    def step_theirs():
        return float(theirs(x, t, context, added_cond_kwargs=added).sample[0, 0, 0, 0])

    with torch.no_grad():
        diff = (ours(x, t, context, added_conditioning(pooled, sizes)) -
                theirs(x, t, context, added_cond_kwargs=added).sample).abs().max().item()
    return {"ours": step_ours, "diffusers": step_theirs}, {"max_abs_diff": diff, "unet_params": count_params(ours)}


# --------------------------------------------------------------------------- TI: diffusers' SDXL script

class ScriptSDXLDataset(torch.utils.data.Dataset):
    """textual_inversion_sdxl.py's dataset with its defaults: random crop, bicubic, flip 0.5, 100 repeats."""

    def __init__(self, paths, tokenizers, size, placeholder):
        self.paths, self.tokenizers, self.size, self.placeholder = paths, tokenizers, size, placeholder

    def __len__(self):
        return len(self.paths) * 100

    def __getitem__(self, i):
        image = Image.open(self.paths[i % len(self.paths)])
        image = image.convert("RGB") if image.mode != "RGB" else image
        text = random.choice(DIFFUSERS_TEMPLATES).format(self.placeholder)
        item = {"original_size": torch.tensor([image.height, image.width])}
        top, left = random.randint(0, image.height - self.size), random.randint(0, image.width - self.size)
        image = image.crop((left, top, left + self.size, top + self.size))
        item["crop_top_left"] = torch.tensor([top, left])
        for k, tok in enumerate(self.tokenizers, 1):
            item[f"input_ids_{k}"] = tok(text, padding="max_length", truncation=True, max_length=77,
                                         return_tensors="pt").input_ids[0]
        image = image.resize((self.size, self.size), resample=Image.BICUBIC)
        if random.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = (np.asarray(image).astype(np.uint8) / 127.5 - 1.0).astype(np.float32)
        item["pixel_values"] = torch.from_numpy(pixels).permute(2, 0, 1)
        return item


class DiffusersSDXLTI:
    def __init__(self, folder: Path, image_paths, resolution: int, vectors: int, seed: int):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        torch.manual_seed(seed)
        random.seed(seed)
        self.tok_1 = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        self.tok_2 = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
        self.noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        self.te_1 = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        self.te_2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")
        self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        placeholders = [TOKEN] + [f"{TOKEN}_{i}" for i in range(1, vectors)]
        assert self.tok_1.add_tokens(placeholders) == vectors
        self.placeholder_ids = self.tok_1.convert_tokens_to_ids(placeholders)
        init_id = self.tok_1.encode(INIT_TOKEN, add_special_tokens=False)[0]
        self.te_1.resize_token_embeddings(len(self.tok_1))
        table = self.te_1.get_input_embeddings().weight.data
        table[self.placeholder_ids] = table[init_id].clone()
        for m in (self.vae, self.unet, self.te_2):
            m.requires_grad_(False)
        text = self.te_1.text_model if hasattr(self.te_1, "text_model") else self.te_1  # transformers 5 flattens it
        for m in (text.encoder, text.final_layer_norm, text.embeddings.position_embedding):
            m.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.te_1.get_input_embeddings().parameters(), lr=1e-4,
                                           betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        placeholder_text = " ".join(self.tok_1.convert_ids_to_tokens(self.placeholder_ids))
        dataset = ScriptSDXLDataset(image_paths, (self.tok_1, self.tok_2), resolution, placeholder_text)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=True, num_workers=0)
        self.batches, self.resolution = iter(self.loader), resolution
        self.te_1.train()
        self.orig_embeds = self.te_1.get_input_embeddings().weight.data.clone()

    def step(self, mark=None) -> float:
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            batch = next(self.batches)
        latents = self.vae.encode(batch["pixel_values"]).latent_dist.sample().detach() * self.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        hidden_1 = self.te_1(batch["input_ids_1"], output_hidden_states=True).hidden_states[-2]
        out_2 = self.te_2(batch["input_ids_2"], output_hidden_states=True)
        target_size = torch.tensor([self.resolution, self.resolution])
        time_ids = torch.cat([batch["original_size"][0], batch["crop_top_left"][0], target_size])[None].float()
        context = torch.cat([hidden_1, out_2.hidden_states[-2]], dim=-1)
        pred = self.unet(noisy, timesteps, context, added_cond_kwargs={"text_embeds": out_2[0], "time_ids": time_ids}).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        keep = torch.ones((len(self.tok_1),), dtype=torch.bool)
        keep[min(self.placeholder_ids):max(self.placeholder_ids) + 1] = False
        with torch.no_grad():
            self.te_1.get_input_embeddings().weight[keep] = self.orig_embeds[keep]
        return loss.detach().item()


def ti_sides(folder: Path, resolution: int, vectors: int, seed: int, workdir: Path):
    paths = write_images(workdir / "phantoms", 8, resolution + 32, seed)  # larger: both sides crop and resize
    ours = OursTI(folder, workdir / "phantoms", resolution, vectors, 1, seed, workdir, "object")
    theirs = DiffusersSDXLTI(folder, paths, resolution, vectors, seed)
    return {"ours": ours.step, "diffusers": theirs.step}, {
        "ours_trainable": ours.trainer.vectors.numel(),
        "diffusers_trainable": theirs.te_1.get_input_embeddings().weight.numel()}


# --------------------------------------------------------------------------- memory: meta-device count

def saved_activations(resolution: int, checkpointing: bool) -> dict:
    """GiB autograd keeps for backward in one TI step of the full SDXL UNet, bf16, batch 1 (context requires grad)."""
    from mini_ldm.unet import UNet, UNetConfig

    cfg = UNetConfig(model_channels=320, channel_mult=(1, 2, 4), attention_levels=(1, 2), heads=(5, 10, 20),
                     context_dim=2048, linear_proj=True, transformer_depth=(0, 2, 10), middle_depth=10,
                     adm_in_channels=2816)
    with torch.device("meta"):
        unet = UNet(cfg).to(torch.bfloat16).requires_grad_(False)
    unet.gradient_checkpointing = checkpointing
    weights = {id(p) for p in unet.parameters()}
    h = resolution // 8
    tokens = {(h >> level) * (h >> level) for level in range(3)}  # self-attention sequence lengths
    seen, totals, per_block, block = set(), {"activations": 0, "attention_probabilities": 0}, {}, ["other"]

    def pack(t):
        base = t._base if t._base is not None else t
        if id(base) not in weights and id(base) not in seen:
            seen.add(id(base))
            kind = "attention_probabilities" if tuple(t.shape[-2:]) in {(n, n) for n in tokens} else "activations"
            totals[kind] += base.numel() * base.element_size()
            if kind == "activations":
                per_block[block[0]] = per_block.get(block[0], 0) + base.numel() * base.element_size()
        return t

    # which block is running: the largest block's activations are what checkpointing recomputes at once
    blocks = {**{f"input_blocks.{i}": b for i, b in enumerate(unet.input_blocks)}, "middle_block": unet.middle_block,
              **{f"output_blocks.{i}": b for i, b in enumerate(unet.output_blocks)}}
    for name, module in blocks.items():
        module.register_forward_pre_hook(lambda m, args, name=name: block.__setitem__(0, name))

    x = torch.zeros(1, 4, h, h, device="meta", dtype=torch.bfloat16)
    context = torch.zeros(1, 77, 2048, device="meta", dtype=torch.bfloat16, requires_grad=True)
    y = torch.zeros(1, 2816, device="meta", dtype=torch.bfloat16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unet(x, torch.tensor([500]), context, y)
    gib = {k: v / 2**30 for k, v in totals.items()}
    largest = max(per_block, key=per_block.get)
    return {"resolution": resolution, "gradient_checkpointing": checkpointing, **gib,
            "largest_block": largest, "largest_block_activations": per_block[largest] / 2**30,
            "unet_weights_gib": sum(p.numel() for p in unet.parameters()) * 2 / 2**30}


# --------------------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", default="sample", choices=("sample", "ti", "memory"))
    p.add_argument("--size", default="reduced", choices=("full", "reduced", "tiny"))
    p.add_argument("--resolution", type=int, default=None, help="default: 512 (sample), 256 (ti)")
    p.add_argument("--vectors", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--k1", type=int, default=1)
    p.add_argument("--k2", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-cache", type=Path, default=None)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    output = args.output or ROOT / "benchmarks" / "results" / f"sdxl_{args.what}.json"
    if args.what == "memory":
        rows = [saved_activations(r, c) for c in (False, True) for r in (256, 512, 1024)]
        for row in rows:
            print(row)
        write_json(output, {"benchmark": "sdxl_memory", "rows": rows, "command": command_line(__file__, argv)})
        return
    threads = use_threads(args.threads)
    folder = random_sdxl(args.size, args.seed, args.model_cache)
    resolution = args.resolution or (512 if args.what == "sample" else 256)
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "sample":
            sides, facts = sample_sides(folder, resolution, args.seed)
        else:
            sides, facts = ti_sides(folder, resolution, args.vectors, args.seed, Path(tmp))
        print(f"SDXL {args.size}, {args.what}, {resolution} px, fp32 CPU, {threads} threads: {facts}")
        results = measure(sides, args.warmup, args.k1, args.k2, args.rounds)
    ratio = results["ours"]["marginal_s_per_step"] / results["diffusers"]["marginal_s_per_step"]
    cpu_ratio = results["ours"]["marginal_cpu_s_per_step"] / results["diffusers"]["marginal_cpu_s_per_step"]
    for n in ("diffusers", "ours"):
        print(f"{n:9s} {results[n]['marginal_s_per_step']:8.3f} s/step wall, "
              f"{results[n]['marginal_cpu_s_per_step']:8.3f} s/step CPU")
    print(f"ratio ours/diffusers: {ratio:.3f} wall, {cpu_ratio:.3f} CPU time")
    write_json(output, {"benchmark": f"sdxl_{args.what}", "size": args.size, "resolution": resolution,
                        "precision": "fp32", "device": "cpu", **facts, "ratio_ours_over_diffusers": ratio,
                        "ratio_cpu_time": cpu_ratio, "results": results,
                        **run_facts(__file__, threads, argv)})
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
