"""Each part of a loaded model against diffusers / transformers, on the tiny random models (fp32, CPU).

Ours is loaded with `mini_ldm.load` from the diffusers folder and from the single LDM-layout file;
the oracle is always built from the folder. Also: .ckpt == .safetensors, dtype casting, family /
prediction / native-size detection, and that loading leaves nothing on the meta device and holds
every weight once.
"""
import json
import os

import pytest
import torch

import mini_ldm
from mini_ldm.errors import UserError
from mini_ldm.samplers import alphas_cumprod_from_config
from devkit.tiny_models import make_ckpt, single_file_state_dict

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

STEMS = ["sd1", "sd2", "sd2v"]
LAYOUTS = ["folder", "single"]
PROMPTS = [
    "a frontal chest x-ray, PA view",
    "Pleural EFFUSION   with cardiomegaly; 3 nodules (left lung), 12.5mm",
    "élan café naïve, 東京 🙂 it's the patient's 2nd scan",
    "a very long prompt " + "with many repeated words and commas, " * 12,  # > 75 tokens: truncated
]


def rel_err(ours, ref) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    assert ours.shape == ref.shape
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@pytest.fixture(scope="module")
def oracles(request):
    """oracles(stem, part) -> the diffusers/transformers module (or tokenizer) from the folder, cached."""
    cache = {}

    def get(stem, part):
        if (stem, part) not in cache:
            folder = request.getfixturevalue(f"{stem}_folder")
            if part == "unet":
                obj = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
            elif part == "vae":
                obj = diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval()
            elif part == "text_encoder":
                obj = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
            else:
                obj = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
            cache[(stem, part)] = obj
        return cache[(stem, part)]

    return get


# --- UNet ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", ["sd1", "sd2"])
def test_unet_meets_its_skips_at_odd_sizes(stem, tiny, oracles):
    """A latent of 18x14 halves to 9x7, then to 5x4: the up path must resize to 9x7, not double to 10x8,
    as diffusers does (so pixel sizes need only be multiples of the VAE's factor, 8 for SD)."""
    sd, ref = tiny(stem, "single"), oracles(stem, "unet")
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(1, 4, 18, 14, generator=gen)
    context = torch.randn(1, 77, sd.unet.cfg.context_dim, generator=gen)
    with torch.no_grad():
        want = ref(x, torch.tensor([321]), encoder_hidden_states=context).sample
        got = sd.unet(x, torch.tensor([321]), context)
    assert got.shape == (1, 4, 18, 14)
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stem", STEMS)
def test_unet_matches_diffusers(stem, layout, tiny, oracles):
    sd, ref = tiny(stem, layout), oracles(stem, "unet")
    assert sd.unet.cfg.context_dim == ref.config.cross_attention_dim
    if stem == "sd2v" and layout == "folder":  # SD2.1-768's config asks for fp32 attention; we honour it
        assert ref.config.upcast_attention and sd.unet.cfg.upcast_attention
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 16, 24, generator=gen)  # not square: catches height/width mix-ups
    context = torch.randn(2, 77, sd.unet.cfg.context_dim, generator=gen)
    timesteps = [
        torch.tensor([999, 1], dtype=torch.long),  # DDIM / DPM++ pass integer timesteps
        torch.tensor([640.625, 17.25]),  # Euler / Euler a pass fractional ones
        torch.tensor(500),  # a scalar for the whole batch
    ]
    with torch.no_grad():
        for t in timesteps:
            want = ref(x, t, encoder_hidden_states=context).sample
            got = sd.unet(x, t, context)
            assert want.abs().max() > 0.1  # a real signal, not zeros
            err = rel_err(got, want)
            assert err < 1e-5, (t, err)


def test_unet_timestep_changes_output(tiny):
    """Guard against the parity test passing because timesteps are ignored on both sides."""
    sd = tiny("sd1", "single")
    gen = torch.Generator().manual_seed(3)
    x, context = torch.randn(1, 4, 16, 16, generator=gen), torch.randn(1, 77, 128, generator=gen)
    with torch.no_grad():
        a, b = sd.unet(x, torch.tensor([10]), context), sd.unet(x, torch.tensor([900]), context)
        c = sd.unet(x, torch.tensor([10]), torch.randn(1, 77, 128, generator=gen))
    assert rel_err(a, b) > 1e-2 and rel_err(a, c) > 1e-3


# --- VAE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stem", ["sd1", "sd2v"])
def test_vae_matches_diffusers(stem, layout, tiny, oracles):
    sd, ref = tiny(stem, layout), oracles(stem, "vae")
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 32, 48, generator=gen) * 2 - 1
    latents = torch.randn(2, 4, 16, 24, generator=gen)
    with torch.no_grad():
        dist = ref.encode(images).latent_dist
        mean, logvar = sd.vae.encode(images)
        assert rel_err(mean, dist.mean) < 1e-5
        assert rel_err(logvar, dist.logvar) < 1e-5
        want = ref.decode(latents).sample
        got = sd.vae.decode(latents)
    assert got.shape == (2, 3, 32, 48)
    assert want.abs().max() > 0.1
    assert rel_err(got, want) < 1e-5
    assert sd.vae.cfg.scale == ref.config.scaling_factor


# --- text encoders and tokenizer ----------------------------------------------------------------


def hf_ids(tokenizer, prompts):
    return tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stem", STEMS)
def test_text_encoder_matches_transformers(stem, layout, tiny, oracles):
    """SD1: CLIP layout in both. SD2 single file: OpenCLIP layout with one block more than SD reads."""
    sd, ref, tok = tiny(stem, layout), oracles(stem, "text_encoder"), oracles(stem, "tokenizer")
    assert sd.text_encoder.cfg.layers == ref.config.num_hidden_layers
    ids = hf_ids(tok, PROMPTS)
    # Our own framing (BOS, 75 ids, EOS, SD1/SD2 padding) gives the same 77 ids as transformers.
    assert torch.equal(torch.tensor([sd.tokenizer(p) for p in PROMPTS]), ids)
    with torch.no_grad():
        want = ref(ids).last_hidden_state
        got = sd.text_encoder(ids)
    assert got.shape == (len(PROMPTS), 77, ref.config.hidden_size)
    assert rel_err(got, want) < 1e-5
    # Different prompts give different contexts (the comparison is not between constants).
    assert rel_err(got[0], got[1]) > 1e-2


def test_sd2_single_file_skips_the_last_open_clip_block(tiny, sd2_single):
    """The file holds three blocks, SD2 reads the penultimate one: the extra block must not be loaded."""
    from safetensors import safe_open

    with safe_open(str(sd2_single), "pt") as f:
        blocks = {k.split(".")[4] for k in f.keys() if k.startswith("cond_stage_model.model.transformer.resblocks.")}
    assert len(blocks) == 3
    assert tiny("sd2", "single").text_encoder.cfg.layers == 2


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stem", ["sd1", "sd2"])
def test_tokenizer_encode_matches_transformers(stem, layout, tiny, oracles):
    sd, tok = tiny(stem, layout), oracles(stem, "tokenizer")
    for text in PROMPTS + ["", "x-ray", "  CT   scan\n\tof the\u00a0chest  "]:
        want = tok(text, add_special_tokens=False).input_ids
        got = sd.tokenizer.encode(text)
        assert isinstance(got, list) and all(isinstance(i, int) for i in got)
        assert got == want, text
    assert len(sd.tokenizer.encode(PROMPTS[-1])) > 75  # encode does not truncate


def test_sd2_folder_tokenizer_follows_diffusers_on_exclamation_mark(tiny, oracles):
    """A diffusers SD2 folder makes "!" its pad token (id 0); the loaded folder model follows diffusers."""
    text = "no effusion! really!"
    want = oracles("sd2", "tokenizer")(text, add_special_tokens=False).input_ids
    assert 0 in want
    assert tiny("sd2", "folder").tokenizer.encode(text) == want


# --- loading: formats, dtypes, detection, memory ------------------------------------------------


def state(sd):
    parts = ("unet", "vae", "text_encoder")
    return {f"{part}.{k}": v for part in parts for k, v in getattr(sd, part).state_dict().items()}


@pytest.mark.parametrize("stem", ["sd1", "sd2v"])
def test_ckpt_loads_like_safetensors(stem, tiny, request, tmp_path):
    seed = {"sd1": 0, "sd2v": 2}[stem]
    single = request.getfixturevalue(f"{stem}_single")
    ckpt = make_ckpt(request.getfixturevalue(f"{stem}_folder"), tmp_path / single.with_suffix(".ckpt").name, seed=seed)
    a, b = mini_ldm.load(ckpt, device="cpu", dtype="fp32"), tiny(stem, "single")
    assert (a.family, a.prediction, a.native_size) == (b.family, b.prediction, b.native_size)
    assert a.unet.cfg == b.unet.cfg and a.vae.cfg == b.vae.cfg and a.text_encoder.cfg == b.text_encoder.cfg
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_folder_and_single_file_hold_the_same_weights(tiny):
    for stem in STEMS:
        a, b = tiny(stem, "folder"), tiny(stem, "single")
        sa, sb = state(a), state(b)
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), stem


@pytest.mark.parametrize("dtype,torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_half_precision_casts_every_parameter(dtype, torch_dtype, layout, tiny):
    sd = tiny("sd2v", layout, dtype)
    assert sd.dtype == torch_dtype
    for part in ("unet", "vae", "text_encoder"):
        tensors = dict(getattr(sd, part).named_parameters()) | dict(getattr(sd, part).named_buffers())
        assert tensors
        wrong = [k for k, v in tensors.items() if v.dtype != torch_dtype]
        assert not wrong, (part, wrong[:3])
    assert sd.unet.cfg.upcast_attention  # SD2 attention runs in fp32 under half precision


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bf16_unet_is_close_to_fp32(layout, tiny):
    full, half = tiny("sd2v", layout), tiny("sd2v", layout, "bf16")
    gen = torch.Generator().manual_seed(9)
    x, context = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 77, 192, generator=gen)
    t = torch.tensor([700, 30])
    with torch.no_grad():
        want = full.unet(x, t, context)
        got = half.unet(x.bfloat16(), t, context.bfloat16())
    assert got.dtype == torch.bfloat16
    err = rel_err(got, want)
    assert 0 < err < 0.05, err  # bf16 has an 8-bit mantissa: close, not equal


def test_bad_dtype_and_prediction_are_user_errors(sd1_single):
    with pytest.raises(UserError, match="--dtype"):
        mini_ldm.load(sd1_single, device="cpu", dtype="fp8")
    with pytest.raises(UserError, match="--prediction"):
        mini_ldm.load(sd1_single, device="cpu", prediction="x0")


@pytest.mark.parametrize("stem,layout,prediction,family,want,native", [
    ("sd1", "single", "auto", "sd1", "epsilon", 512),
    ("sd2", "single", "auto", "sd2", "epsilon", 512),  # 512-base-ema
    ("sd2v", "single", "auto", "sd2", "v", 768),  # v2-1_768-ema-pruned: v from the name
    ("sd2v", "single", "epsilon", "sd2", "epsilon", 512),  # --prediction overrides the name
    ("sd2", "single", "v", "sd2", "v", 768),
    ("sd1", "folder", "auto", "sd1", "epsilon", 32),  # folders: scheduler config and unet sample_size (16 * 2)
    ("sd2", "folder", "auto", "sd2", "epsilon", 32),
    ("sd2v", "folder", "auto", "sd2", "v", 32),
])
def test_family_prediction_and_native_size(stem, layout, prediction, family, want, native, tiny):
    sd = tiny(stem, layout, prediction=prediction)
    assert (sd.family, sd.prediction, sd.native_size) == (family, want, native)
    reason = sd.checkpoint.prediction_reason
    if prediction != "auto":
        assert reason == "--prediction"
    elif layout == "folder":
        assert "scheduler" in reason
    elif want == "v":
        assert "v2-1_768-ema-pruned" in reason


def test_family_shapes(tiny):
    sd1, sd2 = tiny("sd1", "single"), tiny("sd2", "single")
    assert (sd1.unet.cfg.heads, sd1.unet.cfg.linear_proj, sd1.unet.cfg.context_dim) == ((8, 8, 8), False, 128)
    assert (sd2.unet.cfg.heads, sd2.unet.cfg.linear_proj, sd2.unet.cfg.context_dim) == ((1, 2, 2), True, 192)
    assert (sd1.text_encoder.cfg.activation, sd2.text_encoder.cfg.activation) == ("quick_gelu", "gelu")
    assert (sd1.tokenizer.pad_id, sd2.tokenizer.pad_id) == (49407, 0)
    assert (sd1.width, sd2.width) == (128, 192)


@pytest.mark.parametrize("name,yaml,want", [
    ("sd2-768-v-ema.safetensors", None, "v"),
    ("my-model-v-pred.safetensors", None, "v"),
    ("model.safetensors", 'model:\n  params:\n    parameterization: "v"\n', "v"),
    ("model.safetensors", "model:\n  params:\n    linear_start: 0.00085\n", "epsilon"),
    ("model.safetensors", None, "epsilon"),  # the weights alone cannot tell: epsilon unless told
])
def test_prediction_from_file_name_and_yaml(name, yaml, want, sd2v_single, tmp_path):
    path = tmp_path / name
    os.symlink(sd2v_single, path)
    if yaml:
        (tmp_path / "model.yaml").write_text(yaml)
    sd = mini_ldm.load(path, device="cpu", dtype="fp32")
    assert sd.prediction == want
    assert sd.native_size == (768 if want == "v" else 512)
    assert sd.checkpoint.prediction_reason.startswith("auto")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stem", STEMS)
def test_loaded_weights_are_real_and_held_once(stem, layout, tiny, oracles):
    sd = tiny(stem, layout)
    counts = {"unet": oracles(stem, "unet"), "vae": oracles(stem, "vae"), "text_encoder": oracles(stem, "text_encoder")}
    for part, ref in counts.items():
        module = getattr(sd, part)
        tensors = list(module.parameters()) + list(module.buffers())
        assert all(t.device.type == "cpu" for t in tensors), part  # nothing left on the meta device
        assert not any(t.requires_grad for t in tensors), part
        # As many numbers as the reference holds: nothing missing, nothing extra (e.g. SD2's unused block).
        assert sum(t.numel() for t in module.parameters()) == sum(p.numel() for p in ref.parameters()), part
        # Every parameter's bytes exist once: the distinct storages add up to exactly the parameters' size.
        expected = sum(t.numel() * t.element_size() for t in tensors)
        storages = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors}
        assert sum(n for _, n in storages) == expected, part
        assert all(t.abs().sum() > 0 for t in module.parameters()), part  # random, not zeros


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_ckpt_weights_are_held_once(dtype, sd2v_folder, tmp_path):
    ckpt = make_ckpt(sd2v_folder, tmp_path / "v2-1_768-ema-pruned.ckpt", seed=2)
    sd = mini_ldm.load(ckpt, device="cpu", dtype=dtype)
    for part in ("unet", "vae", "text_encoder"):
        tensors = list(getattr(sd, part).parameters())
        assert all(t.device.type == "cpu" for t in tensors)
        expected = sum(t.numel() * t.element_size() for t in tensors)
        storages = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors}
        assert sum(n for _, n in storages) == expected, part


def test_legacy_format_ckpt_loads(sd1_folder, tiny, tmp_path):
    """A .ckpt in torch's pre-1.6 (non-zip) format cannot be memory-mapped; it is still read, safely."""
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": single_file_state_dict(sd1_folder)}, path, _use_new_zipfile_serialization=False)
    a, b = mini_ldm.load(path, device="cpu", dtype="fp32"), tiny("sd1", "single")
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def linked_copy(folder, dst, replace=()):
    """A diffusers folder whose parts link to `folder`'s, except those in `replace` (copied, to be edited)."""
    dst.mkdir()
    for part in folder.iterdir():
        if part.name in replace:
            (dst / part.name).mkdir()
            for f in part.iterdir():
                (dst / part.name / f.name).write_bytes(f.read_bytes())
        else:
            os.symlink(part, dst / part.name)
    return dst


def test_broken_inputs_are_checkpoint_errors(sd1_folder, sd1_single, tmp_path):
    """Each becomes one CheckpointError naming the path (sample.py prints it and exits 2), never a traceback."""
    broken_config = linked_copy(sd1_folder, tmp_path / "no-block-out", replace=("unet",))
    cfg = json.loads((broken_config / "unet" / "config.json").read_text())
    del cfg["block_out_channels"]
    (broken_config / "unet" / "config.json").write_text(json.dumps(cfg))
    no_merges = linked_copy(sd1_folder, tmp_path / "no-merges", replace=("tokenizer",))
    (no_merges / "tokenizer" / "merges.txt").unlink()
    no_vae = linked_copy(sd1_folder, tmp_path / "no-vae")
    (no_vae / "vae").unlink()
    truncated = tmp_path / "truncated.ckpt"
    data = make_ckpt(sd1_folder, tmp_path / "whole.ckpt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    cases = {broken_config: "block_out_channels", no_merges: "merges.txt", no_vae: "vae",
             truncated: "truncated.ckpt", not_a_model: "notes.txt"}
    for path, needle in cases.items():
        with pytest.raises(mini_ldm.CheckpointError) as info:
            mini_ldm.load(path, device="cpu", dtype="fp32")
        message = str(info.value)
        assert path.name in message and needle in message and "\n" not in message, message


def with_beta_schedule(folder, dst, beta_schedule):
    """A linked copy of a diffusers folder whose scheduler_config.json names another beta_schedule."""
    linked_copy(folder, dst, replace=("scheduler",))
    path = dst / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), beta_schedule=beta_schedule)))
    return dst


def test_folder_noise_schedule_follows_its_scheduler_config(sd1_folder, tmp_path):
    folder = with_beta_schedule(sd1_folder, tmp_path / "linear", "linear")
    ours = alphas_cumprod_from_config(mini_ldm.load(folder, device="cpu", dtype="fp32").checkpoint.scheduler_config)
    for cls in (diffusers.EulerDiscreteScheduler, diffusers.DDIMScheduler):
        assert torch.equal(ours, cls.from_pretrained(folder / "scheduler").alphas_cumprod), cls.__name__
    sd_default = alphas_cumprod_from_config({})
    assert not torch.allclose(ours, sd_default)  # the test would be vacuous if linear were SD's schedule


def test_folder_with_unsupported_beta_schedule_is_refused_at_load(sd1_folder, tmp_path):
    folder = with_beta_schedule(sd1_folder, tmp_path / "cosine", "squaredcos_cap_v2")
    with pytest.raises(mini_ldm.CheckpointError) as info:
        mini_ldm.load(folder, device="cpu", dtype="fp32")
    message = str(info.value)
    assert "scheduler/scheduler_config.json" in message and "squaredcos_cap_v2" in message, message
    assert "\n" not in message, message
