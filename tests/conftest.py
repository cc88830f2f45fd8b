"""Shared fixtures: tiny random SD models (see devkit/tiny_models.py), built once per test session."""
import os
import sys
from pathlib import Path

import pytest
import torch

# The repository root first, so `devkit`, `mini_ldm`, ... are ours, and the test helpers (medical_files.py) next.
for folder in (str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])):
    if folder not in sys.path:
        sys.path.insert(0, folder)

from devkit.tiny_models import make_diffusers_folder, make_sdxl_folder, make_sdxl_single_file, make_single_file  # noqa: E402,E501


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Hashes and image features are cached under $XDG_CACHE_HOME/mini-ldm: point it (for the CLIs the tests
    start too) at a folder of the test session, so tests never read or write the user's own cache."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One thread per test worker, in the worker and in every CLI it starts (OMP_NUM_THREADS is inherited):
    the tiny models run no slower on one thread, and `-n 2` workers with two threads each on two cores stall
    badly on a busy machine."""
    n, saved = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(n)
    if saved is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = saved


# Deadlines proportional to the machine: pytest.ini's `timeout` is for an idle 2-core machine; a busy one
# (measured once, by a fixed piece of work against its time on that machine) gets proportionally longer, so a
# slow machine slows the suite down instead of failing it, while a hung test still fails.
CALIBRATION_SECONDS_IDLE = 0.2  # the work below on one idle core of the reference machine (AMD EPYC, 2 cores)
MOST_SLOWDOWN = 8.0  # beyond this a machine is not busy but stuck: the deadline stops growing


def _machine_slowdown() -> float:
    import time

    a = torch.randn(384, 384, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for _ in range(60):
        a = torch.tanh(a @ a)
    return min(MOST_SLOWDOWN, max(1.0, (time.perf_counter() - start) / CALIBRATION_SECONDS_IDLE))


def pytest_collection_modifyitems(config, items):
    base = config.getini("timeout")
    if not base or not items:
        return
    with_one_thread = torch.get_num_threads()
    torch.set_num_threads(1)
    slowdown = _machine_slowdown()
    torch.set_num_threads(with_one_thread)
    for item in items:  # a test's own deadline (@pytest.mark.timeout) is for an idle machine too
        own = item.get_closest_marker("timeout")
        item.add_marker(pytest.mark.timeout(float(own.args[0] if own else base) * slowdown), append=False)


@pytest.fixture(scope="session")
def tiny(request):
    """tiny(stem, layout, dtype="fp32", prediction="auto") -> mini_ldm's StableDiffusion loaded from the
    `<stem>_<layout>` fixture (e.g. "sd2v", "single"), cached for the session. Tests must not modify it."""
    import mini_ldm

    cache = {}

    def get(stem, layout, dtype="fp32", prediction="auto"):
        key = (stem, layout, dtype, prediction)
        if key not in cache:
            path = request.getfixturevalue(f"{stem}_{layout}")
            cache[key] = mini_ldm.load(path, device="cpu", dtype=dtype, prediction=prediction)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def sd1_folder(tmp_path_factory):
    return make_diffusers_folder(tmp_path_factory.mktemp("sd1") / "stable-diffusion-v1-5", "sd1", "epsilon", seed=0)


@pytest.fixture(scope="session")
def sd2_folder(tmp_path_factory):
    return make_diffusers_folder(tmp_path_factory.mktemp("sd2") / "stable-diffusion-2-base", "sd2", "epsilon", seed=1)


@pytest.fixture(scope="session")
def sd2v_folder(tmp_path_factory):
    return make_diffusers_folder(tmp_path_factory.mktemp("sd2v") / "stable-diffusion-2-1", "sd2", "v_prediction", seed=2)


@pytest.fixture(scope="session")
def sd1_single(tmp_path_factory, sd1_folder):
    return make_single_file(sd1_folder, tmp_path_factory.mktemp("sd1_single") / "v1-5-pruned-emaonly.safetensors")


@pytest.fixture(scope="session")
def sd2_single(tmp_path_factory, sd2_folder):
    return make_single_file(sd2_folder, tmp_path_factory.mktemp("sd2_single") / "512-base-ema.safetensors", seed=1)


@pytest.fixture(scope="session")
def sd2v_single(tmp_path_factory, sd2v_folder):
    return make_single_file(sd2v_folder, tmp_path_factory.mktemp("sd2v_single") / "v2-1_768-ema-pruned.safetensors", seed=2)


@pytest.fixture(scope="session")
def sdxl_folder(tmp_path_factory):
    return make_sdxl_folder(tmp_path_factory.mktemp("sdxl") / "stable-diffusion-xl-base-1.0", seed=3)


@pytest.fixture(scope="session")
def sdxl_single(tmp_path_factory, sdxl_folder):
    return make_sdxl_single_file(sdxl_folder, tmp_path_factory.mktemp("sdxl_single") / "sd_xl_base_1.0.safetensors")
