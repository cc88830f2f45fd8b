"""The Textual Inversion optimisation loop.

One new token, one trainable [vectors, width] tensor. Every step:
  cached latent distribution -> sample x0 -> add noise at a uniform timestep t
  -> prompt from a template, with the vectors spliced into the token embeddings
  -> frozen text encoder -> frozen UNet -> MSE against the model's own target (epsilon or v)
  -> gradient reaches the vectors only (all model weights have requires_grad=False).

All randomness comes from one CPU torch.Generator, drawn in a fixed order, and its state is saved
with the vectors and the optimiser: an interrupted run, resumed, ends exactly where an
uninterrupted one would.
"""
import csv
import signal
import threading
from contextlib import contextmanager
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from mini_ldm import prompt as prompting
from mini_ldm.errors import UserError
from mini_ldm.images import grid
from mini_ldm.png import parameters_text, save_png
from mini_ldm.tokenizer import MAX_LENGTH

from .embeddings import Embedding, intermediate_path, write_embedding
from .templates import render


@dataclass
class TrainConfig:
    token: str
    output: Path
    vectors: int = 64
    init_text: str | None = None
    steps: int = 10_000
    lr: float = 0.005
    batch: int = 1
    grad_accum: int = 1
    seed: int = 0
    precision: str = "fp32"  # the model's dtype; the vectors and optimiser are always fp32
    save_every: int = 500
    preview_every: int = 0
    preview_prompt: str = "[name]"
    preview_steps: int = 20
    base_model: str = ""


def state_path(output: Path) -> Path:
    """The optimiser and RNG state saved beside an embedding, for --resume (a safetensors file).

    Not named *.safetensors: sample.py loads every .safetensors/.pt/.bin in an embeddings folder,
    and a state file there would be refused as "not an embedding"."""
    return output.with_name(output.stem + ".state")


def loss_csv_path(output: Path) -> Path:
    return output.with_name(output.stem + "-loss.csv")


def initial_vectors(sd, cfg: TrainConfig, generator) -> torch.Tensor:
    """From --init text: vector i copies the embedding of token i*len/vectors (AUTOMATIC1111's rule).
    Without it: small random vectors."""
    if not cfg.init_text:
        return torch.randn(cfg.vectors, sd.width, generator=generator) * 0.01
    ids = sd.tokenizer.encode(cfg.init_text)
    if not ids:
        raise UserError(f"--init {cfg.init_text!r}: the text has no tokens")
    with torch.no_grad():
        table = sd.text_encoder.embed_tokens(torch.tensor(ids, device=sd.device)).float().cpu()  # (len, width)
    return torch.stack([table[i * len(ids) // cfg.vectors] for i in range(cfg.vectors)])


def check_vectors(vectors: int, max_length: int = MAX_LENGTH):
    room = max_length - 2
    if not 1 <= vectors <= room:
        raise UserError(f"--vectors {vectors}: must be between 1 and {room} (one {max_length}-token window)")


def check_resumable(path: Path):
    """--resume needs the state file that every save writes beside the embedding."""
    state = state_path(Path(path))
    if not state.is_file():
        raise UserError(f"--resume {path}: no {state.name} beside it (it is written with every save of a "
                        "training run), so there is no step count or optimiser state to continue from; "
                        "start a new run without --resume")


class Trainer:
    def __init__(self, sd, cache, templates: list, cfg: TrainConfig, log=print):
        check_vectors(cfg.vectors, sd.tokenizer.max_length)
        self.sd, self.cache, self.templates, self.cfg, self.log = sd, cache, templates, cfg, log
        self.generator = torch.Generator("cpu").manual_seed(cfg.seed)
        self.vectors = torch.nn.Parameter(initial_vectors(sd, cfg, self.generator).to(sd.device))
        self.optimizer = torch.optim.AdamW([self.vectors], lr=cfg.lr, weight_decay=0.0)
        # fp16 needs loss scaling (small gradients underflow); bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(sd.device.type, enabled=cfg.precision == "fp16")
        self.step = 0
        self.rng_state = self.generator.get_state()  # the generator as step `self.step + 1` begins
        self.alphas_cumprod = sd.alphas_cumprod.to(sd.device)

    # --- one optimisation step ----------------------------------------------------------------

    def _batch_loss(self) -> torch.Tensor:
        sd, g, n = self.sd, self.generator, self.cfg.batch
        index = torch.randint(len(self.cache), (n,), generator=g)
        x0 = self.cache.sample(index, g).to(sd.device) * sd.vae.cfg.scale  # (B, 4, h, w)
        noise = torch.randn(x0.shape, generator=g).to(sd.device)
        t = torch.randint(len(self.alphas_cumprod), (n,), generator=g).to(sd.device)
        choice = torch.randint(len(self.templates), (n,), generator=g).tolist()

        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if sd.prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0

        learned = {self.cfg.token: self.vectors}
        prompts = [render(self.templates[c], self.cfg.token, self.cache.caption(i)) for c, i in zip(choice, index.tolist())]
        context = prompting.encode(sd.text_encoder, [prompting.tokenize(sd.tokenizer, text, learned)
                                                     for text in prompts], sd.device)  # one batched call
        out = sd.unet(noisy.to(sd.dtype), t, context)
        return F.mse_loss(out.float(), target)

    def train_step(self) -> float:
        total = 0.0
        for _ in range(self.cfg.grad_accum):
            loss = self._batch_loss() / self.cfg.grad_accum
            self.scaler.scale(loss).backward()
            total += loss.item()
        # The update, the step count and the random state move together: a Ctrl-C arriving in between
        # would otherwise save an update without its count, and a resume would not replay exactly.
        with _sigint_deferred():
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.rng_state = self.generator.get_state()
        return total

    # --- saving and resuming --------------------------------------------------------------------

    def embedding(self) -> Embedding:
        c = self.cfg
        meta = {"token": c.token, "vectors": c.vectors, "step": self.step, "family": self.sd.family,
                "base_model": c.base_model, "init_text": c.init_text or "", "lr": c.lr}
        return Embedding(c.token, self.vectors.detach(), None, {k: str(v) for k, v in meta.items()})

    def save(self, path: Path):
        """The embedding, then its resume state; both written atomically (temporary file, then rename)."""
        write_embedding(path, self.embedding())
        adam = self.optimizer.state.get(self.vectors, {})
        tensors = {"rng_state": self.rng_state, "step": torch.tensor(self.step)}
        if adam:
            tensors |= {"exp_avg": adam["exp_avg"].cpu(), "exp_avg_sq": adam["exp_avg_sq"].cpu(),
                        "adam_step": torch.as_tensor(adam["step"]).float().reshape(())}
        if self.scaler.is_enabled():  # the scale and its growth counter: both decide the next steps
            scaler = self.scaler.state_dict()
            tensors["loss_scale"] = torch.tensor(scaler["scale"], dtype=torch.float32)
            tensors["growth_tracker"] = torch.tensor(scaler["_growth_tracker"], dtype=torch.int64)
        state = state_path(path)
        tmp = state.with_name(f".{state.name}.tmp")
        save_file(tensors, str(tmp), metadata={"config": repr(asdict(self.cfg))})
        tmp.replace(state)

    def resume(self, path: Path):
        """Continue from a saved embedding and the state file beside it."""
        from .embeddings import EmbeddingError, read_embedding
        check_resumable(path)
        state = state_path(path)
        try:
            emb = read_embedding(path)
            with safe_open(str(state), "pt") as f:
                t = {k: f.get_tensor(k) for k in f.keys()}
        except (EmbeddingError, OSError, Exception) as e:
            raise UserError(f"--resume {path}: cannot read the saved run ({str(e).splitlines()[0]})") from None
        if tuple(emb.vectors.shape) != tuple(self.vectors.shape):
            raise UserError(f"--resume {path}: it holds {emb.num_vectors}x{emb.width} vectors, but this run has "
                            f"--vectors {self.cfg.vectors} on a {self.sd.width}-wide model")
        saved_step = emb.metadata.get("step", "")
        if saved_step.isdigit() and int(saved_step) != int(t["step"]):  # a save cut short between the two files
            raise UserError(f"--resume {path}: the embedding is at step {saved_step} but {state.name} at step "
                            f"{int(t['step'])}; resume from one of the <name>-<step>.safetensors snapshots instead")
        with torch.no_grad():
            self.vectors.copy_(emb.vectors.to(self.vectors.device))
        self.step = int(t["step"])
        self.generator.set_state(t["rng_state"])
        self.rng_state = t["rng_state"]
        if "exp_avg" in t:
            self.optimizer.state[self.vectors] = {
                "step": t["adam_step"].clone(), "exp_avg": t["exp_avg"].to(self.vectors.device),
                "exp_avg_sq": t["exp_avg_sq"].to(self.vectors.device)}
        if "loss_scale" in t and self.scaler.is_enabled():
            # load_state_dict, not update(): update() before the first scale() fails (the scale is made lazily)
            self.scaler.load_state_dict({**self.scaler.state_dict(), "scale": float(t["loss_scale"]),
                                         "_growth_tracker": int(t.get("growth_tracker", torch.tensor(0)))})

    # --- the loop ---------------------------------------------------------------------------------

    def preview(self, path: Path):
        sd, c = self.sd, self.cfg
        sd.learned[c.token] = self.vectors.detach().float().cpu()
        try:
            prompt = render(c.preview_prompt, c.token, "")
            images, settings = sd.sample(prompt, seed=c.seed, steps=c.preview_steps, n=4, progress=False,
                                         height=self.cache.mean.shape[-2] * sd.vae.downscale,
                                         width=self.cache.mean.shape[-1] * sd.vae.downscale)
        finally:
            del sd.learned[c.token]
        save_png(grid(images, cols=len(images)), path, parameters_text(settings, c.base_model, {"Training step": self.step}))

    def run(self, progress=True) -> Path:
        c = self.cfg
        out = Path(c.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        log_file = loss_csv_path(out)
        new_log = self.step == 0 or not log_file.exists()
        # line-buffered: every row is on disk as soon as its step ends (for live plots, and after a crash)
        with open(log_file, "w" if new_log else "a", newline="", buffering=1) as fh:
            writer = csv.writer(fh)
            if new_log:
                writer.writerow(["step", "loss", "seconds"])
            bar = tqdm(total=c.steps, initial=self.step, desc=f"training {c.token}", disable=not progress,
                       dynamic_ncols=True)
            start = time.time()
            try:
                while self.step < c.steps:
                    loss = self.train_step()  # interrupted inside: self.rng_state still holds its start
                    if not math.isfinite(loss) and not self.scaler.is_enabled():
                        raise UserError(f"the loss became {loss} at step {self.step}; try a lower --lr "
                                        "or --precision fp32")
                    writer.writerow([self.step, f"{loss:.6f}", f"{time.time() - start:.2f}"])
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    if c.save_every and self.step % c.save_every == 0 and self.step < c.steps:
                        self.save(intermediate_path(out, self.step))
                        self.save(out)
                    if c.preview_every and self.step % c.preview_every == 0:
                        fh.flush()
                        self.preview(out.with_name(f"{out.stem}-preview-{self.step}.png"))
            except KeyboardInterrupt:
                bar.close()
                # The step in flight is dropped: vectors and optimiser are as after self.step steps,
                # and rng_state is the generator as that step began, so a resume replays it exactly.
                self.save(out)
                self.log(f"\ninterrupted at step {self.step}: saved {out}; continue with --resume")
                raise
            bar.close()
        self.save(out)
        return out


@contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C until the block has run, then raise it (only the main thread receives signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
