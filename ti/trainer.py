"""The Textual Inversion optimisation loop, for one learned token or several (`--concepts`).

Each concept (token) has its own trainable [vectors, width] tensor. Every step:
  per concept: cached latent distribution -> sample x0 -> add noise at a uniform timestep t
  -> prompt from a template, with the vectors spliced into the token embeddings
  all concepts' rows as ONE batch -> frozen text encoder -> frozen UNet -> per concept, MSE against the model's
  own target (epsilon or v) -> the sum of those losses -> gradients reach the vectors only, and each concept's
  vectors only from its own rows (no layer mixes the rows of a batch).

All randomness comes from one CPU torch.Generator, drawn concept by concept in a fixed order (with one concept,
exactly the order of the single-token trainer), and its state is saved with the vectors and the optimiser: an
interrupted run, resumed, ends exactly where an uninterrupted one would. A validation loss on held-out images
(validation.py) and early stopping (early_stop.py) are part of that state. The settings are a TrainSettings
(train_settings.py); the files beside the embedding are named in run_files.py; saving and resuming (the state
file, and the checks that a resume continues the same run on the same model) are run_state.py's.
"""
import csv
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mini_ldm import prompt as prompting
from mini_ldm import samplers
from mini_ldm.cli import StopSignals, sigterm_as_interrupt
from mini_ldm.errors import UserError
from mini_ldm.images import grid
from mini_ldm.png import parameters_text, save_png

from .early_stop import ValidationRecord
from .loss_plot import draw_loss_plot
from .run_files import LOSS_COLUMNS, RunFiles
from .run_state import ModelRecord, resume_run, save_run
from .templates import render
from .train_settings import TrainSettings, check_vectors
from .validation import fixed_timesteps, held_out_rows, validation_loss


def initial_vectors(sd, init_text: str | None, vectors: int, generator) -> torch.Tensor:
    """From --init text: vector i copies the embedding of token i*len/vectors (AUTOMATIC1111's rule).
    Without it: small random vectors."""
    if not init_text:
        return torch.randn(vectors, sd.width, generator=generator) * 0.01
    ids = sd.tokenizer.encode(init_text)
    if not ids:
        raise UserError(f"--init {init_text!r}: the text has no tokens")
    with torch.no_grad():  # SDXL: both encoders' embeddings side by side, (len, 768 + 1280)
        table = torch.cat([encoder.embed_tokens(torch.tensor(ids, device=sd.device)).float().cpu()
                           for _, encoder in sd.encoders], dim=-1)  # (len, width)
    return torch.stack([table[i * len(ids) // vectors] for i in range(vectors)])


# Tests of crash recovery: with this variable set to k the process kills itself, as `kill -9` would (no save,
# no cleanup), once step k is done, logged and (where due) saved; a deterministic stand-in for a timed kill.
HARD_STOP_VARIABLE = "MINI_LDM_HARD_STOP_AT_STEP"
MAX_BAD_STEPS_IN_A_ROW = 5  # non-finite steps in a row that end a run (the vectors are saved as they were)


class Trainer:
    """The learned tokens' vectors, their AdamW state, the run's random generator, validation record, and the loop.

    `concepts` (concepts.py) lists the tokens with their latent caches (a plain run: one). settings.output is
    the embedding file (with settings.concepts: the run's folder); the run's other files are named in
    run_files.py. `save` and `resume` are run_state.py's `save_run` and `resume_run`.
    """

    def __init__(self, sd, templates: list, settings: TrainSettings, concepts: list, log=print, vae=None):
        check_vectors(settings.vectors, sd.tokenizer.max_length)
        self.sd, self.templates, self.settings, self.log, self.concepts = sd, templates, settings, log, concepts
        self.model = ModelRecord.of(sd, vae)  # vae: the --vae path the model was loaded with, if any
        self.token, self.output = self.concepts[0].token, Path(settings.output)
        self.files = RunFiles.of(self.output, settings.concepts)
        self.generator = torch.Generator("cpu").manual_seed(settings.seed)
        self.params = [torch.nn.Parameter(initial_vectors(sd, c.init_text, settings.vectors, self.generator)
                                          .to(sd.device)) for c in self.concepts]
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, weight_decay=0.0)
        # fp16 needs loss scaling (small gradients underflow); bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(sd.device.type, enabled=sd.dtype == torch.float16)
        sd.unet.gradient_checkpointing = settings.gradient_checkpointing
        self.unet = torch.compile(sd.unet) if settings.compile else sd.unet
        self.skipped_steps = self.bad_steps_in_a_row = 0  # updates skipped for a NaN/inf loss or gradient
        self.step = 0
        self.rng_state = self.generator.get_state()  # the generator as step `self.step + 1` begins
        self.alphas_cumprod = sd.alphas_cumprod.to(sd.device)
        self.records = {c.token: ValidationRecord() for c in self.concepts}
        self.best = {}  # token -> the vectors of its best validation (with --early-stop)
        self.validated_step = -1  # the last step whose validation is done and logged
        self.resumed = False
        self.saved_states = set()  # state files this run has written
        self.postfix = {}  # what the progress bar shows after the step count
        self.held_out = None
        if settings.validation and any(c.val_cache is not None for c in self.concepts):
            self.held_out = held_out_rows([c.val_cache for c in self.concepts],
                                          fixed_timesteps(settings.val_timesteps, len(self.alphas_cumprod)),
                                          settings.seed)

    @property
    def vectors(self) -> torch.nn.Parameter:
        """The one token's vectors (a run of one concept)."""
        if len(self.params) != 1:
            raise AttributeError("a run of several concepts has one tensor per concept: use .params")
        return self.params[0]

    @property
    def active(self) -> list[int]:
        """The concepts still training (early stopping freezes the others)."""
        return [i for i, c in enumerate(self.concepts) if not self.records[c.token].stopped]

    # --- one optimisation step ----------------------------------------------------------------

    def _batch_loss(self) -> torch.Tensor:
        """The Textual Inversion losses of one batch per active concept, all through the models together: (A,),
        the mean loss of each active concept in the order of self.active (their sum is what a step minimises).
        Every draw comes from the run's one generator, concept by concept, in this order."""
        sd, g, n = self.sd, self.generator, self.settings.batch
        x0, noise, t, prompts, sizes = [], [], [], [], []
        for i in self.active:
            c = self.concepts[i]
            index = torch.randint(len(c.cache), (n,), generator=g)  # which training images
            x0.append(c.cache.sample(index, g))  # (n, 4, h, w): a sample of each cached latent distribution
            noise.append(torch.randn(x0[-1].shape, generator=g))  # (n, 4, h, w)
            t.append(torch.randint(len(self.alphas_cumprod), (n,), generator=g))  # (n,) uniform timesteps
            choice = torch.randint(len(self.templates), (n,), generator=g).tolist()
            prompts += [render(self.templates[k], c.token, c.cache.caption(j)) for k, j in zip(choice, index.tolist())]
            sizes.append(c.cache.size_conditioning(index, x0[-1].shape[-1] * sd.vae.downscale))  # (n, 6) SDXL
        out, target = self._predict(*(torch.cat(v) for v in (x0, noise, t)), prompts, torch.cat(sizes))
        return torch.stack([F.mse_loss(out[k * n:(k + 1) * n], target[k * n:(k + 1) * n])
                            for k in range(len(self.active))])

    def _predict(self, x0, noise, t, prompts: list, sizes):
        """`denoising_prediction` with this run's UNet (compiled or not) and trainable vectors: training and
        validation both use it."""
        learned = {c.token: p for c, p in zip(self.concepts, self.params)}
        return denoising_prediction(self.sd, self.unet, self.alphas_cumprod, x0, noise, t, prompts, sizes, learned)

    def train_step(self, after_update=None) -> dict:
        """One step; returns {concept index: its loss}. `after_update(losses)` runs with the update, before a
        Ctrl-C can land (run() logs the step there, so a step is never counted without its log row)."""
        accum, parts = self.settings.grad_accum, []
        for _ in range(accum):
            losses = self._batch_loss()  # (concepts,)
            self.scaler.scale(losses.sum() / accum).backward()
            parts.append(losses.detach() / accum)
        totals = dict.fromkeys(self.active, 0.0)
        for row in torch.stack(parts).tolist():  # (accum, concepts): one device sync for the whole step
            for i, value in zip(self.active, row):
                totals[i] += value  # summed in Python floats, micro-batch by micro-batch
        # The update, the step count and the random state move together: a Ctrl-C arriving in between
        # would otherwise save an update without its count, and a resume would not replay exactly.
        with _signals_deferred():
            finite = self._update_is_finite(totals)
            if finite:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.rng_state = self.generator.get_state()
            if after_update is not None:
                after_update(totals)
        self._count_skipped(finite)
        return totals

    def _update_is_finite(self, totals: dict) -> bool:
        """False when a loss or (without loss scaling) a gradient is NaN or infinite: then the update is skipped
        and the vectors and AdamW state stay as they were. With fp16 loss scaling an infinite gradient is the
        scaler's own signal to lower its scale, and it skips that update itself."""
        if not all(math.isfinite(v) for v in totals.values()):
            return False
        if self.scaler.is_enabled():
            return True
        grads = [p.grad for p in self.params if p.grad is not None]
        return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())  # one device sync

    def _count_skipped(self, finite: bool):
        if finite:
            self.bad_steps_in_a_row = 0
            return
        self.skipped_steps += 1
        self.bad_steps_in_a_row += 1
        self.log(f"step {self.step}: the loss or its gradient is NaN or infinite; update skipped "
                 f"({self.skipped_steps} skipped so far)")

    # --- validation and early stopping -----------------------------------------------------------

    def _row_errors(self, i: int, x0, noise, t, captions, rows: slice):
        """Per-row mean squared errors of concept i's held-out rows (validation.py's callback)."""
        token = self.concepts[i].token
        prompts = [render(self.templates[r % len(self.templates)], token, caption)
                   for r, caption in zip(range(rows.start, rows.start + len(captions)), captions)]
        # SDXL: each held-out image's recorded size and crop, as a training step conditions on them
        images = self.held_out[i].images[rows]
        sizes = self.concepts[i].val_cache.size_conditioning(images, x0.shape[-1] * self.sd.vae.downscale)
        out, target = self._predict(x0, noise, t, prompts, sizes)
        return (out - target).pow(2).mean(dim=(1, 2, 3))

    def validation_due(self) -> bool:
        every = self.settings.val_interval
        return self.held_out is not None and self.step % every == 0 and self.validated_step < self.step

    def validate(self) -> dict:
        """Validation losses {concept index: loss} of the active concepts with held-out images, recorded for
        early stopping (a new best keeps a copy of the vectors)."""
        s, losses = self.settings, {}
        for i in self.active:
            if self.held_out[i] is None:
                continue
            losses[i] = validation_loss(self.held_out[i], partial(self._row_errors, i))
            token = self.concepts[i].token
            if self.records[token].record(self.step, losses[i], s.early_stop, s.early_stop_delta) and s.early_stop:
                self.best[token] = self.params[i].detach().float().cpu().clone()
        self.validated_step = self.step
        return losses

    # --- saving and resuming (run_state.py) --------------------------------------------------------

    def save(self, snapshot_step: int | None = None):
        """Every concept's embedding and the resume state (run_state.save_run)."""
        save_run(self, snapshot_step)

    def resume(self, path: Path):
        """Continue from the run saved at `path` (run_state.resume_run); refuses another run's settings or model."""
        resume_run(self, path)

    # --- the loop ---------------------------------------------------------------------------------

    def preview(self, path: Path, i: int = 0):
        """A strip of 4 images of concept i's token as it is now, from the run's seed, at the training size,
        each labelled with the step."""
        sd, s, c = self.sd, self.settings, self.concepts[i]
        learned = {**sd.learned, c.token: self.params[i].detach().float().cpu()}
        size = c.cache.mean.shape[-1] * sd.vae.downscale
        images, settings = sd.sample(render(s.preview_prompt, c.token, ""), seed=s.seed, steps=s.preview_steps,
                                     n=4, height=size, width=size, learned=learned, progress=False)
        settings.extra["Training step"] = self.step
        labels = [f"step {self.step}"] * len(images)  # a strip read beside the others says when it was drawn
        save_png(grid(images, cols=len(images), labels=labels), path, parameters_text(settings))

    def run(self, progress=True) -> Path:
        """Train up to settings.steps (or until every concept has stopped early), logging, validating,
        snapshotting and previewing; returns settings.output. Ctrl-C or SIGTERM saves the state after the last
        finished step, then raises KeyboardInterrupt."""
        s = self.settings
        self.files.loss_csv.parent.mkdir(parents=True, exist_ok=True)
        what = self.token if len(self.concepts) == 1 else f"{len(self.concepts)} concepts"
        bar = tqdm(total=s.steps, initial=self.step, desc=f"training {what}", disable=not progress,
                   dynamic_ncols=True)
        fresh = self.step == 0 and not self.resumed
        try:
            with _open_loss_log(self.files.loss_csv, fresh) as log, sigterm_as_interrupt():  # saved, resumable
                start = time.time()
                with _signals_deferred():  # the validation before training (step 0), unless a resume did it
                    self._log_rows(log, {}, self.validate() if self.validation_due() else {}, start, bar)
                while self.step < s.steps and self.active:
                    # interrupted inside: self.rng_state still holds its start. The update, the step's validation,
                    # its log rows and early stopping go together, in the step's signal-deferred block.
                    losses = self.train_step(after_update=lambda losses: self._log_rows(
                        log, losses, self.validate() if self.validation_due() else {}, start, bar))
                    bar.update(1)
                    self._after_step(losses)
                    _hard_stop_if_asked(self.step)
        except KeyboardInterrupt:
            bar.close()
            # The step in flight is dropped: vectors and optimiser are as after self.step steps,
            # and rng_state is the generator as that step began, so a resume replays it exactly.
            self.save()
            self.log(f"\ninterrupted at step {self.step}: saved {self.output}; continue with --resume")
            raise
        bar.close()
        if not self.active:
            self.log(f"every concept stopped early; the run ends at step {self.step}")
        self.save()
        draw_loss_plot(self.files.loss_csv, self.files.plot, title=f"{what}: loss", marks=self._plot_marks())
        return self.output

    def _log_rows(self, log, losses: dict, val: dict, start: float, bar):
        """One CSV row per concept with a training or validation loss at this step; the progress bar's numbers."""
        seconds = f"{time.time() - start:.2f}"
        for i in sorted(set(losses) | set(val)):
            log.writerow([self.step, self.concepts[i].token, f"{losses[i]:.6f}" if i in losses else "",
                          f"{val[i]:.6f}" if i in val else "", seconds])
        if losses:
            self.postfix["loss"] = f"{sum(losses.values()) / len(losses):.4f}"
        for i, v in val.items():
            self.postfix["val" if len(self.concepts) == 1 else f"val {self.concepts[i].name}"] = f"{v:.4f}"
        bar.set_postfix(self.postfix, refresh=False)
        if val:
            draw_loss_plot(self.files.loss_csv, self.files.plot, marks=self._plot_marks())

    def _plot_marks(self) -> dict:
        """The loss plot's best-validation and early-stop steps, per token."""
        return {token: {"best": r.best_step, "stop": r.stopped_step} for token, r in self.records.items()}

    def _after_step(self, losses: dict):
        s = self.settings
        if self.bad_steps_in_a_row >= MAX_BAD_STEPS_IN_A_ROW:  # skipped updates left the vectors good: keep them
            self.save()
            raise UserError(f"the loss or its gradient was NaN or infinite for {self.bad_steps_in_a_row} steps in a "
                            f"row (to step {self.step}); saved the last good vectors to {self.output}; try a lower "
                            "--lr or --dtype fp32, then --resume")
        if s.save_every and self.step % s.save_every == 0 and self.step < s.steps:
            self.save(snapshot_step=self.step)
            self.save()
        if s.preview_every and self.step % s.preview_every == 0:
            for i, c in enumerate(self.concepts):
                self.preview(c.output.with_name(f"{c.name}-preview-{self.step}.png"), i)


def _hard_stop_if_asked(step: int):
    if os.environ.get(HARD_STOP_VARIABLE) == str(step):
        sys.stdout.flush()
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows has no SIGKILL
        os._exit(137)  # not reached on POSIX


@contextmanager
def _open_loss_log(path: Path, fresh: bool):
    """A csv writer on the loss log: a new file with its header, or the existing one appended to.
    Line-buffered: every row is on disk as soon as its step ends (for live plots, and after a crash)."""
    fresh = fresh or not path.exists()
    with open(path, "w" if fresh else "a", newline="", buffering=1) as fh:
        writer = csv.writer(fh)
        if fresh:
            writer.writerow(LOSS_COLUMNS)
        yield writer


@contextmanager
def _signals_deferred():
    """Hold a Ctrl-C or SIGTERM until the block has run, then raise it (only the main thread gets signals)."""
    caught = []
    with StopSignals(lambda signum, frame: caught.append(signum)):
        yield
    if caught:
        raise KeyboardInterrupt


def denoising_prediction(sd, unet, alphas_cumprod, x0, noise, t, prompts: list, sizes, learned: dict) -> tuple:
    """The frozen UNet's prediction and its training target, both (B, 4, h, w) float32, for the VAE latents
    x0 (B, 4, h, w, unscaled), noise (B, 4, h, w), timesteps t (B,), one prompt and (SDXL) six size numbers
    (B, 6) per row, with `learned` tokens' vectors spliced into the prompts: the loss TI minimises, in one place
    for training, validation and the membership audit (privacy.py)."""
    x0 = x0.to(sd.device) * sd.vae.cfg.scale
    noise, t = noise.to(sd.device), t.to(sd.device)  # sizes: moved by with_sizes, on SDXL only (SD 1/2 ignore them)
    alpha_bar = alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = samplers.noised_for_training(x0, noise, alpha_bar)  # sqrt(a) x0 + sqrt(1 - a) noise
    target = samplers.training_target(x0, noise, alpha_bar, sd.prediction)  # the noise, or v
    distinct = list(dict.fromkeys(prompts))  # each distinct prompt through the encoder(s) once, in one batch
    cond = prompting.encode_first_windows(sd.encoders, distinct, learned, sd.device)
    if len(distinct) < len(prompts):
        cond = cond.rows(torch.tensor([distinct.index(p) for p in prompts], device=sd.device))
    cond = sd.unet_conditioning(cond, sizes)  # (B, 77, width) context; SDXL: + pooled vector and sizes
    return unet(noisy.to(sd.dtype), t, cond.context, cond.y).float(), target  # frozen UNet
