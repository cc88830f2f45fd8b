"""The GPU path's safety nets, forced on the CPU: nothing non-finite is ever written, and gradient
checkpointing changes memory, not gradients."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mini_ldm.embeddings import Embedding, EmbeddingError, write_embedding

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_embedding_writer_refuses_non_finite(tmp_path, value):
    vectors = torch.randn(4, 128)
    vectors[2, 7] = value
    out = tmp_path / "bad.safetensors"
    with pytest.raises(EmbeddingError, match="NaN or infinite"):
        write_embedding(out, Embedding("<bad>", vectors, None, {}))
    assert not out.exists() and not list(tmp_path.iterdir())  # no temporary file left either


def test_convert_of_a_nan_a1111_file_exits_2_and_writes_nothing(tmp_path):
    vectors = torch.randn(3, 1024)
    vectors[0, 0] = float("nan")
    src = tmp_path / "diverged.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "diverged", "step": 9},
               src)
    out = tmp_path / "diverged.safetensors"
    proc = subprocess.run([sys.executable, "-m", "ti.convert", str(src), str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "NaN" in lines[0], proc.stderr
    assert not out.exists()


def test_gradient_checkpointing_gives_the_same_gradient(tiny):
    """The gradient reaching the context (what the learned vectors feed) is the same with the UNet's blocks
    recomputed in the backward pass."""
    sd = tiny("sd2", "single")
    unet = sd.unet
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=gen)
    context = torch.randn(2, 77, unet.cfg.context_dim, generator=gen)
    t = torch.tensor([10, 700])

    def context_grad(checkpointing: bool) -> torch.Tensor:
        ctx = context.clone().requires_grad_(True)
        unet.gradient_checkpointing = checkpointing
        try:
            unet(x, t, ctx).square().mean().backward()
        finally:
            unet.gradient_checkpointing = False
        return ctx.grad

    plain, recomputed = context_grad(False), context_grad(True)
    assert plain.abs().sum() > 0
    assert torch.equal(plain, recomputed)


def test_gpu_benchmark_runs_end_to_end_on_cpu(tmp_path):
    """benchmarks/gpu.py is known to work before a GPU is at hand: the tiny model on the CPU, every side."""
    import json
    import os

    out = tmp_path / "gpu.json"
    env = {**os.environ, "MINI_LDM_BENCH_CACHE": str(tmp_path / "models"), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--device", "cpu", "--size", "tiny",
                           "--resolution", "64", "--batches", "1", "--vectors", "2", "--warmup", "0",
                           "--ti-steps", "1", "--sample-steps", "2", "--sample-repeats", "1", "--output", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {(r["side"], r["dtype"]) for r in result["ti_step"]} == {("ours", "fp32"), ("diffusers", "fp32")}
    assert all(r["seconds_per_step"] > 0 for r in result["ti_step"])
    assert {r["side"] for r in result["sampling"]} == {"ours", "diffusers"}
    assert set(result["ratios"]) == {"ti_step_batch1_fp32_vs_diffusers_fp32", "sampling_fp32_vs_diffusers_fp32"}


# --- sampling: a NaN never becomes a black PNG --------------------------------------------------------

def _inject_inf(module, calls: int = 1):
    """A forward hook that puts an inf into the module's output for its first `calls` calls."""
    seen = []

    def hook(mod, inputs, output):
        if len(seen) < calls:
            seen.append(1)
            output = output.clone()
            output.view(-1)[0] = float("inf")
            return output
        return output

    return module.register_forward_hook(hook), seen


def test_nan_in_a_half_precision_vae_decode_is_redone_in_fp32(tiny):
    sd = tiny("sd1", "folder", "bf16")
    clean, _ = sd.sample("a chest x-ray", seed=3, steps=2, height=32, width=32, progress=False)
    handle, seen = _inject_inf(sd.vae.decoder)
    try:
        images, settings = sd.sample("a chest x-ray", seed=3, steps=2, height=32, width=32, progress=False)
    finally:
        handle.remove()
    assert len(seen) == 1  # the bf16 decode was hit ...
    assert settings.extra["VAE decode"] == "fp32 after NaN in bf16"  # ... redone, and recorded for the PNG
    import numpy as np
    ours, reference = np.asarray(images[0]).astype(int), np.asarray(clean[0]).astype(int)
    assert ours.std() > 0 and np.abs(ours - reference).mean() < 3  # the image, not black: fp32 vs bf16 only


def test_nan_latents_stop_with_the_step_and_the_fix(tiny):
    sd = tiny("sd2", "single", "bf16")
    handle, _ = _inject_inf(sd.unet, calls=100)
    try:
        from mini_ldm.errors import UserError
        with pytest.raises(UserError, match=r"sampling step 1 of 3: .*NaN or infinite in bfloat16; run again with "
                                            r"--dtype fp32"):
            sd.sample("x", seed=1, steps=3, height=32, width=32, progress=False)
    finally:
        handle.remove()


# --- training: a NaN never reaches the vectors or a file --------------------------------------------

@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from ti.phantoms import write_phantoms
    return write_phantoms(tmp_path_factory.mktemp("data") / "phantom", count=3)


def make_trainer(folder, phantoms, out, dtype="fp32", **settings):
    import mini_ldm
    from ti.data import cached_latents
    from ti.train_settings import TrainSettings
    from ti.concepts import Concept
    from ti.trainer import Trainer

    sd = mini_ldm.load(folder, device="cpu", dtype=dtype)

    def encode(images):
        with torch.no_grad():
            mean, logvar = sd.vae.encode(images.to(sd.device, sd.dtype))
        return mean.float(), logvar.float()

    cache = cached_latents(phantoms, encode, f"{out}:{dtype}", out.parent / ".latent-cache", 32, progress=False)
    config = {"token": "<phantom>", "output": out, "vectors": 2, "steps": 6, "lr": 0.05, "save_every": 0,
              "dtype": dtype, **settings}
    settings = TrainSettings(**config)
    return Trainer(sd, ["[name]"], settings, [Concept.single(settings, cache=cache)], log=lambda *a: None)


def test_a_non_finite_step_is_skipped_and_leaves_the_state_alone(sd1_folder, phantoms, tmp_path):
    trainer = make_trainer(sd1_folder, phantoms, tmp_path / "phantom.safetensors", dtype="bf16")
    trainer.train_step()
    before = trainer.vectors.detach().clone()
    adam = {k: torch.as_tensor(v).clone() for k, v in trainer.optimizer.state[trainer.vectors].items()}
    handle, seen = _inject_inf(trainer.sd.unet)
    try:
        trainer.train_step()
    finally:
        handle.remove()
    assert len(seen) == 1 and trainer.skipped_steps == 1 and trainer.step == 2
    assert torch.equal(trainer.vectors.detach(), before)
    assert all(torch.equal(torch.as_tensor(trainer.optimizer.state[trainer.vectors][k]), v) for k, v in adam.items())
    trainer.train_step()  # and training goes on
    assert trainer.bad_steps_in_a_row == 0 and not torch.equal(trainer.vectors.detach(), before)


def test_several_non_finite_steps_in_a_row_stop_with_the_last_good_vectors_saved(sd1_folder, phantoms, tmp_path):
    from mini_ldm.errors import UserError
    from mini_ldm.embeddings import read_embedding

    out = tmp_path / "phantom.safetensors"
    trainer = make_trainer(sd1_folder, phantoms, out, dtype="bf16", steps=20)
    trainer.train_step()
    good = trainer.vectors.detach().clone()
    handle, _ = _inject_inf(trainer.sd.unet, calls=1000)
    try:
        with pytest.raises(UserError, match="NaN or infinite for 5 steps in a row"):
            trainer.run(progress=False)
    finally:
        handle.remove()
    saved = read_embedding(out)
    assert torch.isfinite(saved.vectors).all() and torch.equal(saved.vectors, good.float())
    assert trainer.step == 6 and trainer.skipped_steps == 5


def test_gradient_checkpointing_trains_the_same_vectors(sd1_folder, phantoms, tmp_path):
    plain = make_trainer(sd1_folder, phantoms, tmp_path / "a" / "phantom.safetensors", steps=2)
    recomputed = make_trainer(sd1_folder, phantoms, tmp_path / "b" / "phantom.safetensors", steps=2,
                              gradient_checkpointing=True)
    assert recomputed.sd.unet.gradient_checkpointing
    for trainer in (plain, recomputed):
        trainer.train_step()
        trainer.train_step()
    assert torch.equal(plain.vectors, recomputed.vectors)
