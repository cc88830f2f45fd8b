#!/usr/bin/env python
"""Seconds per Textual Inversion training step: ours (ti.trainer.Trainer) vs diffusers'
examples/textual_inversion/textual_inversion.py, on the same random model, images and settings.

    python benchmarks/ti_step.py --family sd2 --resolution 256            # full-size SD 2.0-base, CPU fp32
    python benchmarks/ti_step.py --family sd1 --size small --k2 3         # quicker

What is timed is the *marginal* cost of a step: after warm-up steps, each side runs k1 steps and k2 steps
(timed separately, the two sides alternating in ABBA order, `--rounds` times), and the result is
(T(k2) - T(k1)) / (k2 - k1), each T the fastest of its rounds (other processes can only add time).
One-off work (loading the model, building the token embeddings, encoding our latent cache, the first
slow steps) and any fixed per-loop overhead cancel out. Both wall-clock and this process's CPU seconds
are reported; on a shared machine use --threads 1 (with several threads, one descheduled thread stalls
the others at every parallel region and both numbers balloon).

The diffusers side reproduces, in our own words and with diffusers/transformers components, everything
the script's training loop does every step with its default options (no --gradient_checkpointing,
no xformers, no --mixed_precision, gradient_accumulation_steps 1, dataloader_num_workers 0):
  data loader: open the image file, convert to RGB, resize to the resolution (bicubic), random flip,
    scale to [-1, 1]; pick a template ("a photo of a {}", ...) and tokenize it to 77 ids
  VAE encode of the pixel batch, latent_dist.sample() * scaling_factor
  noise, uniform timesteps, DDPMScheduler.add_noise
  CLIPTextModel(input_ids) with its whole token-embedding matrix (49408 + vectors rows) trainable, the
    rest of the text encoder frozen; UNet forward; MSE against epsilon (or v)
  backward (Accelerator's backward is loss.backward() here), AdamW over the embedding matrix with the
    script's defaults (lr 1e-4, betas 0.9/0.999, weight decay 1e-2, eps 1e-8), the constant LR
    scheduler's step, zero_grad, then restoring every row except the placeholder tokens'
    (index_no_updates), and loss.item() for the progress bar.
Not reproduced: Accelerator's wrappers (a no-op on one CPU process), logging, checkpoint saving
(every 500 steps by default) and validation (off by default).
"""
import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, count_params, random_model, run_facts, use_threads, write_json  # noqa: E402

TOKEN = "<bench>"
INIT_TOKEN = "chest"  # diffusers needs a one-token --initializer_token


# --------------------------------------------------------------------------- diffusers' script, per step

# the script's imagenet_templates_small (its default --learnable_property object), first entries
DIFFUSERS_TEMPLATES = ["a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
                       "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}",
                       "a photo of my {}", "a photo of the cool {}", "a close-up photo of a {}"]


class ScriptDataset(torch.utils.data.Dataset):
    """What the script's TextualInversionDataset does per item with its defaults (no center crop, flip_p 0.5,
    bicubic resize, 100 repeats)."""

    def __init__(self, paths, tokenizer, size, placeholder, repeats=100):
        self.paths, self.tokenizer, self.size, self.placeholder = paths, tokenizer, size, placeholder
        self.repeats = repeats

    def __len__(self):
        return len(self.paths) * self.repeats

    def __getitem__(self, i):
        image = Image.open(self.paths[i % len(self.paths)])
        if image.mode != "RGB":
            image = image.convert("RGB")
        text = random.choice(DIFFUSERS_TEMPLATES).format(self.placeholder)
        ids = self.tokenizer(text, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids[0]
        image = image.resize((self.size, self.size), resample=Image.BICUBIC)
        if random.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = (np.asarray(image).astype(np.uint8) / 127.5 - 1.0).astype(np.float32)
        return {"input_ids": ids, "pixel_values": torch.from_numpy(pixels).permute(2, 0, 1)}


class DiffusersTI:
    """diffusers' textual_inversion.py: its setup once, then `step()` = one pass of its training loop body."""

    def __init__(self, folder: Path, image_paths, resolution: int, vectors: int, batch: int, seed: int,
                 device="cpu", weight_dtype=torch.float32):
        """weight_dtype fp16/bf16 is the script's --mixed_precision: VAE and UNet cast to it, the text encoder
        kept in fp32, the forward passes under autocast (what Accelerator's prepare adds)."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from transformers import CLIPTextModel, CLIPTokenizer

        torch.manual_seed(seed)
        random.seed(seed)
        self.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        self.noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        self.text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")

        placeholders = [TOKEN] + [f"{TOKEN}_{i}" for i in range(1, vectors)]
        assert self.tokenizer.add_tokens(placeholders) == vectors
        init_ids = self.tokenizer.encode(INIT_TOKEN, add_special_tokens=False)
        assert len(init_ids) == 1, init_ids
        self.placeholder_ids = self.tokenizer.convert_tokens_to_ids(placeholders)
        self.text_encoder.resize_token_embeddings(len(self.tokenizer))
        table = self.text_encoder.get_input_embeddings().weight.data
        with torch.no_grad():
            for i in self.placeholder_ids:
                table[i] = table[init_ids[0]].clone()

        self.device = torch.device(device)
        self.text_encoder.to(self.device)
        self.vae.to(self.device, weight_dtype)
        self.unet.to(self.device, weight_dtype)
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(False)
        text = self.text_encoder.text_model if hasattr(self.text_encoder, "text_model") else self.text_encoder
        text.encoder.requires_grad_(False)
        text.final_layer_norm.requires_grad_(False)
        text.embeddings.position_embedding.requires_grad_(False)

        self.optimizer = torch.optim.AdamW(self.text_encoder.get_input_embeddings().parameters(), lr=1e-4,
                                           betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.lr_scheduler = get_scheduler("constant", optimizer=self.optimizer, num_warmup_steps=500,
                                          num_training_steps=5000)
        placeholder_text = " ".join(self.tokenizer.convert_ids_to_tokens(self.placeholder_ids))
        dataset = ScriptDataset(image_paths, self.tokenizer, resolution, placeholder_text)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
        self.batches = iter(self.loader)
        self.text_encoder.train()
        self.weight_dtype = weight_dtype
        self.orig_embeds = self.text_encoder.get_input_embeddings().weight.data.clone()

    def _next_batch(self):
        try:
            return next(self.batches)
        except StopIteration:  # a new epoch
            self.batches = iter(self.loader)
            return next(self.batches)

    def step(self, mark=None) -> float:
        """One pass of the loop body; `mark` (a Parts) times its parts when given."""
        mark = mark or Parts.ignore
        batch = self._next_batch()
        mark("data loader")
        mixed = self.weight_dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.weight_dtype, enabled=mixed):
            return self._step(batch, mark)

    def _step(self, batch, mark) -> float:
        pixels = batch["pixel_values"].to(self.device, self.weight_dtype)
        latents = self.vae.encode(pixels).latent_dist.sample().detach()
        latents = latents * self.vae.config.scaling_factor
        mark("VAE encode")
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  device=latents.device).long()
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        context = self.text_encoder(batch["input_ids"].to(self.device))[0].to(dtype=self.weight_dtype)
        mark("text encoder forward")
        mark.watch(context)
        model_pred = self.unet(noisy_latents, timesteps, context).sample
        mark("UNet forward")
        if self.noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        loss.backward()
        mark.backward_done()
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        mark("optimizer")
        keep = torch.ones((len(self.tokenizer),), dtype=torch.bool, device=self.device)
        keep[min(self.placeholder_ids):max(self.placeholder_ids) + 1] = False
        with torch.no_grad():
            self.text_encoder.get_input_embeddings().weight[keep] = self.orig_embeds[keep]
        loss = loss.detach().item()
        mark("restore frozen rows")
        return loss

    def params(self) -> dict:
        return {"unet": count_params(self.unet), "text_encoder": count_params(self.text_encoder),
                "vae": count_params(self.vae),
                "trainable": sum(p.numel() for p in self.text_encoder.parameters() if p.requires_grad)}


# --------------------------------------------------------------------------- ours

class OursTI:
    """train.py's path through the public pieces: mini_ldm.load, the latent cache, ti.trainer.Trainer."""

    def __init__(self, folder: Path, images_dir: Path, resolution: int, vectors: int, batch: int, seed: int,
                 workdir: Path, template: str, device="cpu", dtype="fp32", compile=False,
                 gradient_checkpointing=False):
        import mini_ldm
        from ti.data import cached_latents
        from ti.templates import load_templates
        from ti.train_settings import TrainSettings
        from ti.concepts import Concept
        from ti.trainer import Trainer

        sd = mini_ldm.load(folder, device=device, dtype=dtype)
        sd.unet.gradient_checkpointing = gradient_checkpointing

        def encode(images):  # as train.py does
            with torch.no_grad():
                mean, logvar = sd.vae.encode(images.to(sd.device, sd.dtype))
            return mean.float().cpu(), logvar.float().cpu()

        t0 = time.perf_counter()
        cache = cached_latents(images_dir, encode, f"bench:{folder}", workdir / "latent-cache", resolution,
                               seed=seed, progress=False)
        self.cache_seconds = time.perf_counter() - t0
        cfg = TrainSettings(token=TOKEN, output=workdir / "bench.safetensors", vectors=vectors, init_text=INIT_TOKEN,
                          steps=10**9, lr=0.005, batch=batch, seed=seed, dtype=dtype, save_every=0,
                          compile=compile)
        self.sd, self.trainer = sd, Trainer(sd, load_templates(template), cfg, [Concept.single(cfg, cache=cache)],
                                            log=lambda *a: None)

    def step(self, mark=None) -> float:
        if mark is None:
            losses = {}  # train_step hands its per-concept losses to after_update
            self.trainer.train_step(after_update=losses.update)
            return sum(losses.values())
        # Trainer.train_step with grad_accum 1, with the UNet call wrapped to time the parts
        sd, tr = self.sd, self.trainer
        unet_forward = sd.unet.forward

        def unet(x, t, context, y=None):
            mark("data + text encoder forward")
            mark.watch(context)
            out = unet_forward(x, t, context, y)
            mark("UNet forward")
            return out

        sd.unet.forward = unet
        try:
            loss = tr._batch_loss().sum()  # the per-concept losses, summed as train_step does
        finally:
            del sd.unet.forward
        tr.scaler.scale(loss).backward()
        mark.backward_done()
        tr.scaler.step(tr.optimizer)
        tr.scaler.update()
        tr.optimizer.zero_grad(set_to_none=True)
        tr.step += 1
        loss = loss.item()
        mark("optimizer")
        return loss

    def params(self) -> dict:
        return {"unet": count_params(self.sd.unet), "text_encoder": count_params(self.sd.text_encoder),
                "vae": count_params(self.sd.vae), "trainable": self.trainer.vectors.numel()}


# --------------------------------------------------------------------------- timing

class Parts:
    """CPU seconds per named part of one step: mark(name) closes the part that ran since the last mark.
    The backward is split where the context's gradient arrives (a hook on the context tensor): before it
    is the UNet's backward, after it the text encoder's."""

    def __init__(self):
        self.seconds, self.last, self.arrived = {}, time.process_time(), None

    def __call__(self, name, at=None):
        now = time.process_time() if at is None else at
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now

    def watch(self, context):
        def arrived(grad):
            self.arrived = self.arrived or time.process_time()
        context.register_hook(arrived)

    def backward_done(self):
        self("UNet backward", at=self.arrived)
        self("text encoder backward")


class _Ignore(Parts):
    def __call__(self, name, at=None):
        pass

    def watch(self, context):
        pass

    def backward_done(self):
        pass


Parts.ignore = _Ignore()


def breakdown(step, steps: int) -> dict:
    """Median CPU seconds per part over `steps` steps (after one more untimed)."""
    step(Parts())
    runs = []
    for _ in range(steps):
        gc.collect()
        parts, start = Parts(), time.process_time()
        step(parts)
        runs.append(parts.seconds | {"total": time.process_time() - start})
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}



def timed(step, k: int) -> tuple:
    """(wall seconds, this process's CPU seconds, 1-minute load average after) for k steps."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(k):
        loss = step()
        if not np.isfinite(loss):
            raise SystemExit(f"non-finite loss {loss}: the random model is unusable")
    return time.perf_counter() - start, time.process_time() - cpu, os.getloadavg()[0]


def measure(sides: dict, warmup: int, k1: int, k2: int, rounds: int, log=print) -> dict:
    """Per side: raw times of k1- and k2-step runs per round and the marginal seconds per step,
    (min T(k2) - min T(k1)) / (k2 - k1), in wall-clock seconds and in CPU seconds of this process."""
    names = list(sides)
    raw = {n: {"warmup": [], str(k1): [], str(k2): []} for n in names}
    for i in range(warmup):  # alternate sides step by step
        for n in (names if i % 2 == 0 else names[::-1]):
            raw[n]["warmup"].append(timed(sides[n], 1))
            log(f"  warm-up {i + 1}/{warmup} {n:9s} {raw[n]['warmup'][-1][0]:7.2f} s")
    for r in range(rounds):
        # ABBA: the side order and the k order both flip each round, so drift (thermal, page cache) cancels
        for j, k in enumerate((k1, k2) if r % 2 == 0 else (k2, k1)):
            for n in (names if (r + j) % 2 == 0 else names[::-1]):
                raw[n][str(k)].append(timed(sides[n], k))
                w, c, load = raw[n][str(k)][-1]
                log(f"  round {r + 1}/{rounds} {n:9s} {k} steps {w:7.2f} s wall {c:7.2f} s cpu (load {load:.1f})")
    out = {}
    for n in names:
        a, b = raw[n][str(k1)], raw[n][str(k2)]
        # Other processes can only add time, so each T(k) is the fastest of its runs (min over rounds).
        marginal = (min(y[0] for y in b) - min(x[0] for x in a)) / (k2 - k1)
        marginal_cpu = (min(y[1] for y in b) - min(x[1] for x in a)) / (k2 - k1)
        wall = [(y[0] - x[0]) / (k2 - k1) for x, y in zip(a, b)]
        cpu = [(y[1] - x[1]) / (k2 - k1) for x, y in zip(a, b)]
        out[n] = {"marginal_s_per_step": marginal, "marginal_cpu_s_per_step": marginal_cpu,
                  "marginal_per_round": wall, "marginal_cpu_per_round": cpu,
                  "marginal_median_of_rounds": statistics.median(wall),
                  "mean_s_per_step_k2": min(y[0] for y in b) / k2, "raw_wall_cpu_load": raw[n]}
    return out


def profile(step, steps: int, rows: int = 25) -> str:
    """torch.profiler table of `steps` steps, by self CPU time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def write_images(folder: Path, count: int, size: int, seed: int) -> list:
    """Synthetic grayscale chest-phantom PNGs slightly larger than the training size, so both sides resize."""
    from readers.phantom import chest_phantom

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"phantom-{i:02d}.png"
        chest_phantom(rng, size).save(path)
        paths.append(path)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="sd2", choices=("sd1", "sd2"))
    p.add_argument("--size", default="full", choices=("full", "small", "tiny"),
                   help="full: the real SD sizes (default); small: half width; tiny: a smoke test")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--vectors", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--images", type=int, default=8, help="training images (default: 8)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first (default: 2)")
    p.add_argument("--k1", type=int, default=1, help="steps in the short timed run (default: 1)")
    p.add_argument("--k2", type=int, default=4, help="steps in the long timed run (default: 4)")
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds of (k1, k2) runs; median taken (default: 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: all cores)")
    p.add_argument("--template", default="object", help="our template list (default: object, like the script's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-cache", type=Path, default=None, help="where the random model is built "
                   "(default: $MINI_LDM_BENCH_CACHE or <tmp>/mini-ldm-bench)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile N steps of each side with torch.profiler and print the top ops")
    p.add_argument("--breakdown", type=int, default=0, metavar="N",
                   help="after timing, CPU seconds per part of the step (VAE, text encoder, UNet forward and "
                        "backward, optimizer, ...), median of N steps per side")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "ti_step.json")
    args = p.parse_args(argv)
    assert args.k2 > args.k1 >= 0

    threads = use_threads(args.threads)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.1f} before starting: other processes share the CPU; with several "
              "threads each one descheduled stalls the others, so prefer a quiet machine or --threads 1")
    folder = random_model(args.family, args.size, args.seed, args.model_cache)
    with tempfile.TemporaryDirectory(prefix="ti-bench-") as tmp:
        tmp = Path(tmp)
        paths = write_images(tmp / "images", args.images, args.resolution + args.resolution // 8, args.seed)
        t0 = time.perf_counter()
        ours = OursTI(folder, tmp / "images", args.resolution, args.vectors, args.batch, args.seed, tmp, args.template)
        print(f"ours: loaded + cached {len(ours.trainer.cache)} latents in {time.perf_counter() - t0:.1f} s "
              f"(cache {ours.cache_seconds:.1f} s)")
        t0 = time.perf_counter()
        theirs = DiffusersTI(folder, paths, args.resolution, args.vectors, args.batch, args.seed)
        print(f"diffusers: set up in {time.perf_counter() - t0:.1f} s")
        print(f"{args.family} {args.size}, {args.resolution} px, batch {args.batch}, {args.vectors} vectors, fp32, "
              f"{threads} threads; warm-up {args.warmup}, k1 {args.k1}, k2 {args.k2}, rounds {args.rounds}")
        results = measure({"ours": ours.step, "diffusers": theirs.step}, args.warmup, args.k1, args.k2, args.rounds)
        params = {"ours": ours.params(), "diffusers": theirs.params()}
        parts = {}
        if args.breakdown:
            parts = {"ours": breakdown(ours.step, args.breakdown), "diffusers": breakdown(theirs.step, args.breakdown)}
            print(f"\nCPU seconds per part of a step (median of {args.breakdown}):")
            for name, table in parts.items():
                print(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in table.items()))
        profiles = {}
        for name, side in (("ours", ours), ("diffusers", theirs)) if args.profile else ():
            profiles[name] = profile(side.step, args.profile)
            print(f"\n{name}: {args.profile} steps by self CPU time\n{profiles[name]}")

    o, d = results["ours"]["marginal_s_per_step"], results["diffusers"]["marginal_s_per_step"]
    ratio = o / d
    cpu_ratio = results["ours"]["marginal_cpu_s_per_step"] / results["diffusers"]["marginal_cpu_s_per_step"]
    print()
    print(f"| side      | wall s/step (marginal) | CPU s/step (marginal) | wall s/step (best {args.k2}-step run) |")
    print("| --------- | ---------------------- | --------------------- | --------------------------- |")
    for n in ("diffusers", "ours"):
        r = results[n]
        print(f"| {n:9s} | {r['marginal_s_per_step']:22.3f} | {r['marginal_cpu_s_per_step']:21.3f} "
              f"| {r['mean_s_per_step_k2']:27.3f} |")
    print(f"ratio ours/diffusers: {ratio:.3f} wall ({1 / ratio:.2f}x faster), {cpu_ratio:.3f} CPU time; "
          f"target <= 0.5: {'met' if ratio <= 0.5 else 'NOT met'}")
    write_json(args.output, {
        "benchmark": "ti_step", "family": args.family, "size": args.size, "resolution": args.resolution,
        "batch": args.batch, "vectors": args.vectors, "precision": "fp32", "device": "cpu",
        "warmup": args.warmup, "k1": args.k1, "k2": args.k2, "rounds": args.rounds, "images": args.images,
        "ratio_ours_over_diffusers": ratio, "ratio_cpu_time": cpu_ratio, "target_met": ratio <= 0.5,
        "results": results, "params": params, "profiles": profiles, "breakdown_cpu_s": parts,
        **run_facts(__file__, threads, argv),
    })
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
