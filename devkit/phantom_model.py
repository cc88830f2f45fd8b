"""Train the phantom model: a small Stable Diffusion 2 of our own, on the labelled chest phantoms.

    python -m devkit.phantom_model --output weights/phantom-sd2.safetensors

The result is an ordinary SD 2 single file (OpenCLIP text keys, `model.diffusion_model.` / `first_stage_model.`
prefixes, the few numbers shapes cannot tell in its `mini_ldm.config` metadata), so `mini_ldm.load` and every CLI
read it like a public checkpoint. The recipe, and why it is this small (one contended CPU core, ~45 minutes):
  data         PHANTOM images of readers/chest_findings.py (seed --seed), captions naming their findings
  autoencoder  KL, 8x down (128 px -> 16x16x4 latents: a UNet step costs a quarter of 4x's 32x32x4), trained
               on 32 px crops (it is convolutional; a crop costs 1/16 of an image), then on whole images so its
               middle attention meets the full 16x16 grid; L1 + MSE + a light KL
  latent scale the loader multiplies latents by SD's 0.18215 and reads no other scale from a file, so the
               measured latent std is folded into quant_conv / post_quant_conv: scaled latents have unit std
  text encoder OpenCLIP layout, width 64, random and frozen (never trained): TI then meets what it meets on SD
  UNet         epsilon prediction on SD's scaled_linear schedule (what the loader assumes for SD 2 base),
               captions with 10% left empty so classifier-free guidance has an unconditional side; EMA weights
  storage      every tensor in fp16 (the 49,408 x 64 token table alone is 6.3 MB in fp16), ~18 MB in all
Resumable: each stage saves its state (weights, optimizer, step) to --work as safetensors; a rerun continues.
Every step's randomness comes from (seed, stage, step), so a resumed run equals an uninterrupted one.
"""
import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from mini_ldm.key_renames import open_clip_names
from mini_ldm.checkpoint import CONFIG_METADATA
from mini_ldm.families import SD2, UNET_PREFIX, VAE_PREFIX
from mini_ldm.clip import TextConfig, TextEncoder
from mini_ldm.io import safetensors_bytes, write_bytes_atomic
from mini_ldm.prompt import encode_prompt
from mini_ldm.tokenizer import CLIPTokenizer
from mini_ldm.unet import UNet, UNetConfig
from mini_ldm.vae import AutoencoderKL, VAEConfig, posterior_std
from readers.chest_findings import SIZE, chest_cases

SD_LATENT_SCALE = 0.18215  # what the loader multiplies a single file's latents by
VAE = VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)  # 32 is GroupNorm(32)'s least width
UNET = UNetConfig(model_channels=64, channel_mult=(1, 1, 2), num_res_blocks=1, attention_levels=(1, 2),
                  heads=(1, 1, 2), context_dim=64, linear_proj=True)  # heads: SD 2's head width of 64
TEXT = TextConfig(width=64, layers=2, heads=2, mlp_width=256, activation="gelu")
CHECKPOINT_EVERY = 25  # steps between saved states


@dataclass
class Recipe:
    seed: int = 2026
    images: int = 1500
    vae_steps: int = 300  # the last eighth on whole images, the rest on crops
    vae_batch: int = 32
    vae_crop: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    unet_steps: int = 800
    unet_batch: int = 32
    unet_lr: float = 1e-3
    empty_captions: float = 0.1
    ema: float = 0.995


def main(argv=None):
    args = _parser().parse_args(argv)
    recipe = Recipe(seed=args.seed, images=args.images, vae_steps=args.vae_steps, unet_steps=args.unet_steps)
    output = Path(args.output)
    work = Path(args.work) if args.work else output.parent / f".{output.stem}-work"
    work.mkdir(parents=True, exist_ok=True)
    log = Log(output.with_suffix(".log"))
    log.write(f"start: {json.dumps(asdict(recipe))}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    started = time.time()
    images, captions = phantom_data(recipe)
    text = frozen_text_encoder(recipe.seed)
    vae = train_vae(images, recipe, work, log)
    scale = fold_latent_scale(vae, images, work, log)
    latents = encode_all(vae, images, work)
    unet = train_unet(latents, captions, text, recipe, work, log)
    size = write_model(output, unet, vae, text, recipe, scale)
    log.write(f"done: {output} ({size / 1e6:.1f} MB) in {(time.time() - started) / 60:.1f} min this run")


def _parser():
    p = argparse.ArgumentParser(prog="python -m devkit.phantom_model", description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="the model file to write (its training log goes beside it, .log)")
    p.add_argument("--work", help="folder for the resumable state (default: .<output name>-work beside the output)")
    p.add_argument("--seed", type=int, default=Recipe.seed, help="seeds the phantoms, the weights and every step")
    p.add_argument("--images", type=int, default=Recipe.images, help="training phantoms")
    p.add_argument("--vae-steps", type=int, default=Recipe.vae_steps, help="autoencoder steps")
    p.add_argument("--unet-steps", type=int, default=Recipe.unet_steps, help="UNet steps")
    return p


class Log:
    """The training log beside the model: appended, flushed per line, so an interrupted run keeps its record."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, line: str):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {line}\n")
        tqdm.write(line)


# --- data and the frozen text encoder --------------------------------------------------------------


def phantom_data(recipe: Recipe) -> tuple[torch.Tensor, list]:
    """(images uint8 (N, 128, 128), captions), phantom i from seed (recipe.seed, i)."""
    cases = chest_cases(recipe.seed, recipe.images)
    images = torch.from_numpy(np.stack([np.asarray(image) for image, _ in cases]))
    return images, [truth.caption for _, truth in cases]


def to_pixels(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> (B, 3, H, W) in [-1, 1]: grey in all three channels, as an RGB PNG of it is read."""
    return (images_u8.float() / 127.5 - 1)[:, None].expand(-1, 3, -1, -1).contiguous()


def frozen_text_encoder(seed: int) -> TextEncoder:
    """The random text encoder, rounded to fp16 (as it is stored) before any use, so training conditions on
    exactly the contexts the loaded file gives."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text = TextEncoder(TEXT)
    with torch.no_grad():
        for p in text.parameters():
            p.copy_(p.half().float())
    return text.eval().requires_grad_(False)


def caption_contexts(text: TextEncoder, captions: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(contexts of the distinct captions (K, 77, 64) with the empty caption last, caption -> row index (N,))."""
    distinct = sorted(set(captions))
    encoders = [(CLIPTokenizer.default(pad_id=0), text)]  # SD 2 pads with 0, as mini_ldm.load's tokenizer does
    contexts = torch.cat([encode_prompt(encoders, c, {}, "cpu").context for c in distinct + [""]])
    return contexts, torch.tensor([distinct.index(c) for c in captions])


def step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 100_003 + step)


# --- resumable state -------------------------------------------------------------------------------


def save_state(path: Path, modules: dict, optimizer, step: int):
    tensors = {f"{name}.{k}": v.contiguous() for name, m in modules.items() for k, v in m.state_dict().items()}
    state = optimizer.state_dict()
    for index, slots in state["state"].items():
        tensors |= {f"optimizer.{index}.{k}": v.reshape(-1) if v.dim() == 0 else v for k, v in slots.items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), {"step": str(step), "param_groups": json.dumps(state["param_groups"])})
    tmp.replace(path)  # whole or not at all: an interrupted save leaves the previous state


def load_state(path: Path, modules: dict, optimizer) -> int:
    """Restores `modules` and `optimizer` from `path`; the step to continue from (0 without a state)."""
    if not path.is_file():
        return 0
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    for name, m in modules.items():
        m.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    slots = {}
    for key, v in tensors.items():
        if key.startswith("optimizer."):
            _, index, slot = key.split(".", 2)
            slots.setdefault(int(index), {})[slot] = v.reshape(()) if slot == "step" else v
    optimizer.load_state_dict({"state": slots, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"])


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over 5% of the steps, then cosine down to a tenth of the peak."""
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# --- the autoencoder -------------------------------------------------------------------------------


def train_vae(images: torch.Tensor, recipe: Recipe, work: Path, log: Log) -> AutoencoderKL:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed + 1)
        vae = AutoencoderKL(VAE)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    path = work / "vae.safetensors"
    start = load_state(path, {"vae": vae}, optimizer)
    if start:
        log.write(f"autoencoder: resumed at step {start}")
    whole_from = recipe.vae_steps - max(1, recipe.vae_steps // 8)
    losses = []
    bar = tqdm(range(start, recipe.vae_steps), desc="autoencoder", initial=start, total=recipe.vae_steps)
    for step in bar:
        g = step_generator(recipe.seed, 1, step)
        batch = vae_batch(images, recipe, g, whole=step >= whole_from)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe.vae_steps, recipe.vae_lr)
        loss, parts = vae_loss(vae, batch, recipe.kl_weight, g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        losses.append(parts)
        bar.set_postfix(l1=f"{parts[0]:.4f}")
        if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == recipe.vae_steps:
            save_state(path, {"vae": vae}, optimizer, step + 1)
            l1, mse, kl = np.mean(losses, axis=0)
            log.write(f"autoencoder step {step + 1}/{recipe.vae_steps}: L1 {l1:.4f} MSE {mse:.5f} KL {kl:.1f}"
                      f" ({'whole images' if step >= whole_from else f'{recipe.vae_crop} px crops'})")
            losses = []
    return vae.eval().requires_grad_(False)


def vae_batch(images: torch.Tensor, recipe: Recipe, g: torch.Generator, whole: bool) -> torch.Tensor:
    """Random crops (or, `whole`, 1/16 as many whole images: the same pixels per step) as (B, 3, h, w) in
    [-1, 1]."""
    if whole:
        index = torch.randint(len(images), (max(1, recipe.vae_batch // 16),), generator=g)
        return to_pixels(images[index])
    c = recipe.vae_crop
    index = torch.randint(len(images), (recipe.vae_batch,), generator=g)
    tops, lefts = torch.randint(SIZE - c + 1, (2, recipe.vae_batch), generator=g)
    crops = torch.stack([images[i, t:t + c, l:l + c] for i, t, l in zip(index, tops, lefts)])
    return to_pixels(crops)


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, kl_weight: float, g: torch.Generator):
    mean, logvar = vae.encode(x)
    std = posterior_std(logvar)
    z = mean + std * torch.randn(mean.shape, generator=g)
    out = vae.decode(z)
    l1, mse = (out - x).abs().mean(), (out - x).pow(2).mean()
    kl = 0.5 * (mean.pow(2) + std.pow(2) - 1 - logvar).sum(dim=(1, 2, 3)).mean()
    return l1 + mse + kl_weight * kl, (l1.item(), mse.item(), kl.item())


@torch.no_grad()
def fold_latent_scale(vae: AutoencoderKL, images: torch.Tensor, work: Path, log: Log) -> float:
    """Rescale the latent space so that latents times SD's 0.18215 have unit std over the training images:
    quant_conv's mean half (and the log-variance, shifted by 2 ln k) scaled by k, post_quant_conv's input by
    1/k; the decoder's output is unchanged. Once: the folded VAE is saved to `work`. Returns the std measured."""
    done = work / "vae-folded.safetensors"
    if done.is_file():
        vae.load_state_dict(load_file(str(done)))
        return float(json.loads((work / "latent-std.json").read_text())["std"])
    means = torch.cat([vae.encode(to_pixels(images[i:i + 32]))[0] for i in range(0, min(len(images), 256), 32)])
    std = means.std().item()
    k = 1.0 / (std * SD_LATENT_SCALE)
    z = VAE.z_channels
    vae.quant_conv.weight[:z] *= k
    vae.quant_conv.bias[:z] *= k
    vae.quant_conv.bias[z:] += 2 * math.log(k)
    vae.post_quant_conv.weight /= k
    save_file({k_: v.contiguous() for k_, v in vae.state_dict().items()}, str(done))
    (work / "latent-std.json").write_text(json.dumps({"std": std, "mean": means.mean().item()}))
    log.write(f"latent std {std:.4f} (mean {means.mean().item():.4f}) on 256 training images: folded k = {k:.4f} "
              f"into quant_conv/post_quant_conv, so latents x {SD_LATENT_SCALE} have std 1")
    return std


@torch.no_grad()
def encode_all(vae: AutoencoderKL, images: torch.Tensor, work: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled latent means, scaled posterior stds) of every training image, cached in `work`."""
    path = work / "latents.safetensors"
    if path.is_file():
        cached = load_file(str(path))
        return cached["mean"], cached["std"]
    means, stds = [], []
    for i in tqdm(range(0, len(images), 32), desc="encoding"):
        mean, logvar = vae.encode(to_pixels(images[i:i + 32]))
        means.append(mean * SD_LATENT_SCALE)
        stds.append(posterior_std(logvar) * SD_LATENT_SCALE)
    mean, std = torch.cat(means), torch.cat(stds)
    save_file({"mean": mean.contiguous(), "std": std.contiguous()}, str(path))
    return mean, std


# --- the UNet --------------------------------------------------------------------------------------


def sd_alphas_cumprod() -> torch.Tensor:
    """SD's scaled_linear schedule: betas linear in sqrt from 0.00085 to 0.012 over 1000 steps."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def train_unet(latents, captions: list, text: TextEncoder, recipe: Recipe, work: Path, log: Log) -> UNet:
    """Epsilon prediction; returns the EMA weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed + 2)
        unet = UNet(UNET)
    ema = UNet(UNET).requires_grad_(False)
    ema.load_state_dict(unet.state_dict())
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.unet_lr, weight_decay=0.0)
    path = work / "unet.safetensors"
    start = load_state(path, {"unet": unet, "ema": ema}, optimizer)
    if start:
        log.write(f"UNet: resumed at step {start}")
    contexts, rows = caption_contexts(text, captions)
    alphas = sd_alphas_cumprod()
    losses = []
    bar = tqdm(range(start, recipe.unet_steps), desc="UNet", initial=start, total=recipe.unet_steps)
    for step in bar:
        g = step_generator(recipe.seed, 2, step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe.unet_steps, recipe.unet_lr)
        loss = unet_loss(unet, latents, rows, contexts, alphas, recipe, g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        update_ema(ema, unet, min(recipe.ema, (1 + step) / (10 + step)))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == recipe.unet_steps:
            save_state(path, {"unet": unet, "ema": ema}, optimizer, step + 1)
            log.write(f"UNet step {step + 1}/{recipe.unet_steps}: loss {np.mean(losses):.4f}")
            losses = []
    return ema.eval()


def unet_loss(unet, latents, rows, contexts, alphas, recipe: Recipe, g: torch.Generator) -> torch.Tensor:
    mean, std = latents
    index = torch.randint(len(mean), (recipe.unet_batch,), generator=g)
    x0 = mean[index] + std[index] * torch.randn(mean[index].shape, generator=g)  # a posterior sample, as SD
    t = torch.randint(1000, (recipe.unet_batch,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = alphas[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    empty = torch.rand(recipe.unet_batch, generator=g) < recipe.empty_captions
    context = contexts[torch.where(empty, len(contexts) - 1, rows[index])]
    return F.mse_loss(unet(xt, t, context), noise)


@torch.no_grad()
def update_ema(ema: UNet, model: UNet, decay: float):
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


# --- the file --------------------------------------------------------------------------------------



def write_model(output: Path, unet: UNet, vae: AutoencoderKL, text: TextEncoder, recipe: Recipe, std: float) -> int:
    """The SD 2 single file, every tensor fp16. Returns its size in bytes."""
    tensors = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    tensors |= {VAE_PREFIX + k: v for k, v in vae.state_dict().items()}
    tensors |= {SD2.encoders[0].file_prefix + k: v for k, v in open_clip_names(text.state_dict(), TEXT.layers).items()}
    stated = {"unet_heads": list(UNET.heads), "text_heads": TEXT.heads, "native_size": SIZE}
    about = {"trained_by": "python -m devkit.phantom_model", "recipe": asdict(recipe), "raw_latent_std": std,
             "prediction": "epsilon", "schedule": "scaled_linear 0.00085-0.012, 1000 steps"}
    data = safetensors_bytes({k: v.detach().half().contiguous().clone() for k, v in tensors.items()},
                             {CONFIG_METADATA: json.dumps(stated), "mini_ldm.phantom": json.dumps(about),
                              "format": "pt"})
    output.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(output, data)
    return len(data)


if __name__ == "__main__":
    sys.exit(main())
