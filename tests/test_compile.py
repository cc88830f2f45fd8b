"""--compile (train.py, sample.py): torch.compile's inductor backend runs the Textual Inversion step and the
sampling loop on the CPU (it writes C++ and builds it with the machine's C compiler), and what it computes is
what the eager code computes.

Inductor builds one C++ kernel per fused group of operations, forward and backward, and a cold compile costs
CPU time per kernel: for a two-level UNet of one res block per level 113 s of CPU, so the step is compared on a
one-level UNet (a res block and a transformer, the middle block, the output blocks): 73 s of CPU cold on this
machine's cores (6.5 minutes of wall time with the machine's load at 8 on 2 cores), near nothing when inductor's
own cache (/tmp/torchinductor_<user>) already holds the kernels. Hence their own timeouts, above the suite's 300 s.
The UNet of the tiny SD1 and SDXL models is only traced (torch._dynamo.explain), not compiled.
"""
from pathlib import Path

import pytest
import torch

import mini_ldm
from devkit.tiny_models import randomize_
from mini_ldm.unet import UNet, UNetConfig
from ti.concepts import Concept
from ti.data import LatentCache
from ti.train_settings import TrainSettings
from ti.trainer import Trainer

# Inductor fuses and reorders float32 operations, so the compiled step is not bit-identical: measured, the loss
# agreed to all printed digits and the gradient to 2e-6 of its largest entry. These bounds are 10-100x that, far
# below what a wrong graph (a dropped term, another conditioning) gives (order 1).
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4  # of the largest gradient entry


@pytest.mark.timeout(900)  # tracing SDXL's deeper UNet: 100 s of wall time at a load of 8 on 2 cores
def test_the_unet_forward_traces_as_one_graph(tiny):
    """No graph breaks in the UNet's forward (each break is a trip back to Python and splits what inductor
    can fuse), with and without SDXL's added conditioning."""
    for stem in ("sd1", "sdxl"):
        sd = tiny(stem, "folder")
        unet = sd.unet
        x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
        context = torch.randn(2, 77, unet.cfg.context_dim)
        y = torch.randn(2, unet.cfg.adm_in_channels) if unet.cfg.adm_in_channels else None
        explained = torch._dynamo.explain(unet)(x, t, context, y)
        assert explained.graph_break_count == 0, (stem, explained.break_reasons)
        assert explained.graph_count == 1, stem


def small_unet_model(sd1_folder):
    """The tiny SD1 model with a smaller random UNet (same context width), so that inductor builds it in a
    suite's time."""
    sd = mini_ldm.load(sd1_folder, device="cpu", dtype="fp32")
    cfg = UNetConfig(model_channels=32, channel_mult=(1,), num_res_blocks=1, attention_levels=(0,), heads=(1,),
                     context_dim=sd.unet.cfg.context_dim)
    sd.unet = randomize_(UNet(cfg), seed=5).eval().requires_grad_(False)
    return sd


def one_step(sd, compile: bool, tmp_path: Path):
    """One Textual Inversion step's per-concept losses and the vectors' gradient, from the same draws."""
    mean = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cache = LatentCache(mean, torch.full_like(mean, 0.1), [""] * 3, ["a.png", "b.png", "c.png"])
    settings = TrainSettings(token="<x>", output=tmp_path / "x.safetensors", vectors=2, steps=1, save_every=0,
                             batch=2, compile=compile)
    trainer = Trainer(sd, ["[name]"], settings, [Concept.single(settings, cache=cache)], log=lambda *a: None)
    losses = trainer._batch_loss()
    losses.sum().backward()
    return losses.detach(), trainer.params[0].grad.clone()


def has_cpp_compiler() -> bool:
    from torch._inductor import cpp_builder, exc
    try:
        return bool(cpp_builder.get_cpp_compiler())
    except exc.InvalidCxxCompiler:
        return False


@pytest.mark.skipif(not has_cpp_compiler(), reason="inductor's CPU backend builds C++: it needs g++ (g++ --version)")
@pytest.mark.timeout(1800)
def test_a_compiled_step_equals_the_eager_one(sd1_folder, tmp_path):
    sd = small_unet_model(sd1_folder)
    eager_loss, eager_grad = one_step(sd, False, tmp_path)
    torch._dynamo.reset()
    compiled_loss, compiled_grad = one_step(sd, True, tmp_path)
    assert eager_grad.abs().max() > 0  # the step reaches the vectors (not a test of nothing)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=LOSS_RTOL, atol=0)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=0, atol=GRAD_RTOL * eager_grad.abs().max().item())


def test_compile_without_a_cpp_compiler_is_one_line_before_the_model_loads(sd1_folder, tmp_path, monkeypatch):
    """Inductor would fail at the first step with a traceback, after the model loaded and the latents were
    encoded: train.py says so first, in one line, and so does sample.py."""
    import sample
    import train
    from in_process import run_main
    from torch._inductor import cpp_builder, exc
    from ti.phantoms import write_phantoms

    def no_compiler():
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    data = write_phantoms(tmp_path / "phantom", count=2)
    proc = run_main(train.main, "--device", "cpu", "--data", data, "--model", sd1_folder, "--compile", "--output",
                    tmp_path / "x.safetensors")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --compile:") and "g++" in proc.stderr
    assert "loaded" not in proc.stdout and not (tmp_path / "x.safetensors").exists()
    proc = run_main(sample.main, "--device", "cpu", "--model", sd1_folder, "--prompt", "x", "--compile", "--output",
                    tmp_path / "x.png")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --compile:"), proc.stderr
    assert "loaded" not in proc.stdout and not (tmp_path / "x.png").exists()


def test_sample_compile_draws_with_the_compiled_unet(sd1_folder, tmp_path, monkeypatch):
    """sample.py --compile hands the model's UNet to torch.compile and draws with what it returns (here the
    UNet itself, recorded: compiling is the next test's cost), for every kind of job: one image, a dataset, a
    grid, an interpolation strip."""
    import sample
    from in_process import run_main

    compiled = []

    def record(module, *args, **kwargs):
        compiled.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", record)
    common = ("--device", "cpu", "--model", sd1_folder, "--steps", "2", "--height", "32", "--width", "32", "--seed", "1")
    proc = run_main(sample.main, *common, "--prompt", "x", "--compile", "--output", tmp_path / "one.png")
    assert proc.returncode == 0 and (tmp_path / "one.png").is_file() and compiled == ["UNet"], proc.stderr
    proc = run_main(sample.main, *common, "--prompt", "x", "--count", "2", "--compile", "--output", tmp_path / "set")
    assert proc.returncode == 0 and len(list((tmp_path / "set").rglob("*.png"))) == 2, proc.stderr
    proc = run_main(sample.main, *common, "--prompt", "x", "--grid", "cfg=1,3", "--compile", "--output", tmp_path / "grid")
    assert proc.returncode == 0 and (tmp_path / "grid" / "grid.png").is_file(), proc.stderr
    proc = run_main(sample.main, *common, "--interpolate", "x", "y", "--alphas", "0,1", "--compile", "--output",
                    tmp_path / "strip")
    assert proc.returncode == 0 and len(list((tmp_path / "strip").glob("strip-*.png"))) == 1, proc.stderr
    assert compiled == ["UNet"] * 4
    proc = run_main(sample.main, *common, "--prompt", "x", "--output", tmp_path / "eager.png")
    assert proc.returncode == 0 and compiled == ["UNet"] * 4  # without the flag: not compiled


@pytest.mark.skipif(not has_cpp_compiler(), reason="inductor's CPU backend builds C++: it needs g++ (g++ --version)")
@pytest.mark.timeout(1800)
def test_compiled_sampling_draws_the_eager_image(sd1_folder):
    """The sampling loop with the compiled UNet (forward only, guidance's doubled batch) gives the eager image:
    inductor's float32 reordering moves a pixel by at most one level of 255, and rarely."""
    import numpy as np

    sd = small_unet_model(sd1_folder)
    draw = dict(seed=3, steps=3, height=32, width=32, cfg=3.0, progress=False)
    [eager], _ = sd.sample("a chest x-ray", **draw)
    sd.unet = torch.compile(sd.unet)
    [compiled], _ = sd.sample("a chest x-ray", **draw)
    difference = np.abs(np.asarray(eager, dtype=int) - np.asarray(compiled, dtype=int))
    assert np.asarray(eager).std() > 1  # an image, not a flat field
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01, (difference.max(), (difference > 0).mean())
