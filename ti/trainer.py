"""The Textual Inversion optimisation loop.

One new token, one trainable [vectors, width] tensor. Every step:
  cached latent distribution -> sample x0 -> add noise at a uniform timestep t
  -> prompt from a template, with the vectors spliced into the token embeddings
  -> frozen text encoder -> frozen UNet -> MSE against the model's own target (epsilon or v)
  -> gradient reaches the vectors only (all model weights have requires_grad=False).

All randomness comes from one CPU torch.Generator, drawn in a fixed order, and its state is saved
with the vectors and the optimiser: an interrupted run, resumed, ends exactly where an
uninterrupted one would. The settings are a TrainSettings (train_settings.py); the files beside the
embedding are named in run_files.py.
"""
import csv
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tqdm.auto import tqdm

from mini_ldm import prompt as prompting
from mini_ldm import samplers
from mini_ldm.errors import UserError
from mini_ldm.images import grid
from mini_ldm.io import first_line, write_bytes_atomic
from mini_ldm.png import parameters_text, save_png

from .embeddings import Embedding, intermediate_path, read_embedding, write_embedding
from .run_files import check_resumable, loss_csv_path, state_path, trim_loss_log
from .templates import render
from .train_settings import TrainSettings, check_vectors


def initial_vectors(sd, settings: TrainSettings, generator) -> torch.Tensor:
    """From --init text: vector i copies the embedding of token i*len/vectors (AUTOMATIC1111's rule).
    Without it: small random vectors."""
    if not settings.init_text:
        return torch.randn(settings.vectors, sd.width, generator=generator) * 0.01
    ids = sd.tokenizer.encode(settings.init_text)
    if not ids:
        raise UserError(f"--init {settings.init_text!r}: the text has no tokens")
    with torch.no_grad():
        table = sd.text_encoder.embed_tokens(torch.tensor(ids, device=sd.device)).float().cpu()  # (len, width)
    return torch.stack([table[i * len(ids) // settings.vectors] for i in range(settings.vectors)])


class Trainer:
    """One learned token's vectors, their AdamW state and the run's random generator, and the loop.

    settings.output (a Path) is where the embedding goes; the run's other files go beside it (run_files.py).
    """

    def __init__(self, sd, cache, templates: list, settings: TrainSettings, log=print):
        check_vectors(settings.vectors, sd.tokenizer.max_length)
        self.sd, self.cache, self.templates, self.settings, self.log = sd, cache, templates, settings, log
        self.token, self.output = settings.token, Path(settings.output)
        self.generator = torch.Generator("cpu").manual_seed(settings.seed)
        self.vectors = torch.nn.Parameter(initial_vectors(sd, settings, self.generator).to(sd.device))
        self.optimizer = torch.optim.AdamW([self.vectors], lr=settings.lr, weight_decay=0.0)
        # fp16 needs loss scaling (small gradients underflow); bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(sd.device.type, enabled=sd.dtype == torch.float16)
        self.unet = torch.compile(sd.unet) if settings.compile else sd.unet
        self.step = 0
        self.rng_state = self.generator.get_state()  # the generator as step `self.step + 1` begins
        self.alphas_cumprod = sd.alphas_cumprod.to(sd.device)

    # --- one optimisation step ----------------------------------------------------------------

    def _batch_loss(self) -> torch.Tensor:
        """Draw a batch (images, latent samples, noise, timesteps, templates, in that order) and its loss."""
        sd, g, n = self.sd, self.generator, self.settings.batch
        index = torch.randint(len(self.cache), (n,), generator=g)
        x0 = self.cache.sample(index, g).to(sd.device) * sd.vae.cfg.scale  # (B, 4, h, w)
        noise = torch.randn(x0.shape, generator=g).to(sd.device)
        t = torch.randint(len(self.alphas_cumprod), (n,), generator=g).to(sd.device)
        choice = torch.randint(len(self.templates), (n,), generator=g).tolist()

        alpha_bar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = samplers.noised_for_training(x0, noise, alpha_bar)
        target = samplers.training_target(x0, noise, alpha_bar, sd.prediction)
        learned = {self.token: self.vectors}
        prompts = [render(self.templates[c], self.token, self.cache.caption(i)) for c, i in zip(choice, index.tolist())]
        windows = [prompting.first_window(sd.tokenizer, text, learned) for text in prompts]
        context = prompting.encode(sd.text_encoder, windows, sd.device)  # one batched call
        out = self.unet(noisy.to(sd.dtype), t, context)
        return F.mse_loss(out.float(), target)

    def train_step(self) -> float:
        total, accum = 0.0, self.settings.grad_accum
        for _ in range(accum):
            loss = self._batch_loss() / accum
            self.scaler.scale(loss).backward()
            total += loss.item()
        # The update, the step count and the random state move together: a Ctrl-C arriving in between
        # would otherwise save an update without its count, and a resume would not replay exactly.
        with _signals_deferred():
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.rng_state = self.generator.get_state()
        return total

    # --- saving and resuming --------------------------------------------------------------------

    def embedding(self) -> Embedding:
        s = self.settings
        meta = {"token": self.token, "vectors": s.vectors, "step": self.step, "family": self.sd.family,
                "base_model": s.base_model, "init_text": s.init_text or "", "lr": s.lr}
        return Embedding(self.token, self.vectors.detach(), None, {k: str(v) for k, v in meta.items()})

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
        settings = {k: str(v) for k, v in asdict(self.settings).items()}
        write_bytes_atomic(state_path(path), safetensors.torch.save(tensors, metadata={"settings": repr(settings)}))

    def resume(self, path: Path):
        """Continue from a saved embedding and the state file beside it."""
        check_resumable(path)
        emb, saved = self._read_saved_run(path)
        with torch.no_grad():
            self.vectors.copy_(emb.vectors.to(self.vectors.device))
        self.step = int(saved["step"])
        self.generator.set_state(saved["rng_state"])
        self.rng_state = saved["rng_state"]
        if "exp_avg" in saved:
            self.optimizer.state[self.vectors] = {
                "step": saved["adam_step"].clone(), "exp_avg": saved["exp_avg"].to(self.vectors.device),
                "exp_avg_sq": saved["exp_avg_sq"].to(self.vectors.device)}
        if "loss_scale" in saved and self.scaler.is_enabled():
            # load_state_dict, not update(): update() before the first scale() fails (the scale is made lazily)
            self.scaler.load_state_dict({**self.scaler.state_dict(), "scale": float(saved["loss_scale"]),
                                         "_growth_tracker": int(saved.get("growth_tracker", torch.tensor(0)))})
        trim_loss_log(loss_csv_path(self.output), self.step)  # steps logged after the save run again

    def _read_saved_run(self, path: Path):
        state = state_path(path)
        try:
            emb = read_embedding(path)
            with safe_open(str(state), "pt") as f:
                saved = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # an EmbeddingError, or safetensors' own error for a damaged state file
            raise UserError(f"--resume {path}: cannot read the saved run ({first_line(e)})") from None
        if tuple(emb.vectors.shape) != tuple(self.vectors.shape):
            raise UserError(f"--resume {path}: it holds {emb.num_vectors}x{emb.width} vectors, but this run has "
                            f"--vectors {self.settings.vectors} on a {self.sd.width}-wide model")
        saved_step = emb.metadata.get("step", "")
        if saved_step.isdigit() and int(saved_step) != int(saved["step"]):  # a save cut short between the two
            raise UserError(f"--resume {path}: the embedding is at step {saved_step} but {state.name} at step "
                            f"{int(saved['step'])}; resume from one of the <name>-<step>.safetensors snapshots "
                            "instead")
        return emb, saved

    # --- the loop ---------------------------------------------------------------------------------

    def preview(self, path: Path):
        """A 4-image grid of the token as it is now, from the run's seed, at the training size."""
        sd, s = self.sd, self.settings
        learned = {**sd.learned, self.token: self.vectors.detach().float().cpu()}
        size = self.cache.mean.shape[-1] * sd.vae.downscale
        images, settings = sd.sample(render(s.preview_prompt, self.token, ""), seed=s.seed, steps=s.preview_steps,
                                     n=4, height=size, width=size, learned=learned, progress=False)
        settings.extra["Training step"] = self.step
        save_png(grid(images, cols=len(images)), path, parameters_text(settings))

    def run(self, progress=True) -> Path:
        """Train up to settings.steps, logging, snapshotting and previewing; returns the embedding's path.
        Ctrl-C or SIGTERM saves the state after the last finished step, then raises KeyboardInterrupt."""
        s, out = self.settings, self.output
        out.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=s.steps, initial=self.step, desc=f"training {self.token}", disable=not progress,
                   dynamic_ncols=True)
        try:
            with _open_loss_log(loss_csv_path(out), fresh=self.step == 0) as log, _sigterm_as_interrupt():
                start = time.time()
                while self.step < s.steps:
                    loss = self.train_step()  # interrupted inside: self.rng_state still holds its start
                    log.writerow([self.step, f"{loss:.6f}", f"{time.time() - start:.2f}"])
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    self._after_step(loss)
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

    def _after_step(self, loss: float):
        s, out = self.settings, self.output
        if not math.isfinite(loss) and not self.scaler.is_enabled():
            raise UserError(f"the loss became {loss} at step {self.step}; try a lower --lr or --dtype fp32")
        if s.save_every and self.step % s.save_every == 0 and self.step < s.steps:
            self.save(intermediate_path(out, self.step))
            self.save(out)
        if s.preview_every and self.step % s.preview_every == 0:
            self.preview(out.with_name(f"{out.stem}-preview-{self.step}.png"))


@contextmanager
def _open_loss_log(path: Path, fresh: bool):
    """A csv writer on the loss log: a new file with its header, or the existing one appended to.
    Line-buffered: every row is on disk as soon as its step ends (for live plots, and after a crash)."""
    fresh = fresh or not path.exists()
    with open(path, "w" if fresh else "a", newline="", buffering=1) as fh:
        writer = csv.writer(fh)
        if fresh:
            writer.writerow(["step", "loss", "seconds"])
        yield writer


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (what `timeout`, `kill` and job schedulers send) ends the run like Ctrl-C: saved, resumable."""
    if not _main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_deferred():
    """Hold a Ctrl-C or SIGTERM until the block has run, then raise it (only the main thread gets signals)."""
    if not _main_thread():
        yield
        return
    caught = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt
