"""Embedding files: every format round-trips, the paper's files load, diffusers accepts ours, bad files fail cleanly."""

import gzip
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from mini_ldm.embeddings import (
    Embedding,
    EmbeddingError,
    check_width,
    intermediate_path,
    load_embeddings,
    read_embedding,
    write_embedding,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "paper-embeddings"
PAPER_FILES = sorted(PAPER.glob("*.pt")) if PAPER.is_dir() else []
needs_paper = pytest.mark.skipif(not PAPER_FILES, reason="paper embeddings not present in ../shared/paper-embeddings")


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) + 0.1  # random and never all-zero


def one_line_naming(err, path):
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


# ---------------------------------------------------------------- round trips


def test_ours_round_trip(tmp_path):
    meta = {"step": "500", "base_model": "v2-0_512-base-ema.safetensors", "init_text": "x-ray", "lr": "0.005"}
    emb = Embedding("<effusion>", rand(4, 1024), None, meta)
    out = write_embedding(tmp_path / "effusion.safetensors", emb)
    back = read_embedding(out)
    assert back.token == "<effusion>" and back.source == out
    assert torch.equal(back.vectors, emb.vectors) and back.vectors.dtype == torch.float32
    assert back.metadata == {
        **meta, "token": "<effusion>", "vectors": "4", "width": "1024", "family": "sd2", "format": "mini-ldm-ti"
    }
    assert [p.name for p in tmp_path.iterdir()] == ["effusion.safetensors"]  # no temp file left behind


def test_ours_is_small_with_one_tensor(tmp_path):
    out = write_embedding(tmp_path / "e.safetensors", Embedding("<e>", rand(64, 1024)))
    assert out.stat().st_size < 1 << 20
    tensors = safetensors.torch.load_file(out)
    assert list(tensors) == ["<e>"] and tensors["<e>"].shape == (64, 1024) and tensors["<e>"].dtype == torch.float32
    from safetensors import safe_open

    with safe_open(out, "pt") as f:
        meta = f.metadata()
    for key in ("token", "vectors", "step", "family", "base_model", "init_text", "lr", "width", "format"):
        assert isinstance(meta[key], str)
    assert meta["format"] == "mini-ldm-ti" and meta["vectors"] == "64" and meta["family"] == "sd2"


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_diffusers_files(tmp_path, suffix):
    t = rand(3, 768)
    path = tmp_path / f"learned_embeds{suffix}"
    if suffix == ".bin":
        torch.save({"<cat-toy>": t}, path)
    else:
        safetensors.torch.save_file({"<cat-toy>": t}, path)
    emb = read_embedding(path)
    assert emb.token == "<cat-toy>" and torch.equal(emb.vectors, t) and emb.metadata["format"] == "diffusers"


def test_single_vector_files_become_one_row(tmp_path):
    t = rand(768)
    torch.save({"<old>": t}, tmp_path / "learned_embeds.bin")  # the original diffusers script: [width]
    torch.save(t, tmp_path / "bare.pt")  # legacy: a bare tensor, named after the file
    torch.save(rand(2, 768), tmp_path / "bare2.pt", _use_new_zipfile_serialization=False)  # pre-1.6 torch.save
    old, bare, bare2 = (read_embedding(tmp_path / n) for n in ("learned_embeds.bin", "bare.pt", "bare2.pt"))
    assert old.token == "<old>" and torch.equal(old.vectors, t[None])
    assert bare.token == "bare" and torch.equal(bare.vectors, t[None]) and bare.metadata["format"] == "legacy"
    assert bare2.token == "bare2" and bare2.vectors.shape == (2, 768)


def test_a1111_round_trip(tmp_path):
    emb = Embedding("<pneumonia>", rand(8, 1024), None, {"step": "1200", "base_model": "512-base-ema"})
    out = write_embedding(tmp_path / "pneumonia.pt", emb, format="a1111")
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert raw["string_to_token"] == {"*": 265} and raw["name"] == "<pneumonia>" and raw["step"] == 1200
    assert raw["sd_checkpoint"] is None and raw["sd_checkpoint_name"] == "512-base-ema"
    back = read_embedding(out)
    assert back.token == "pneumonia"  # A1111's prompt word is the file stem
    assert torch.equal(back.vectors, emb.vectors) and back.metadata["step"] == "1200"


def test_a1111_parameter_and_parameterdict(tmp_path):
    t = rand(2, 768)
    param = {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(t.clone())}, "name": "x"}
    torch.save(param, tmp_path / "param.pt")
    # the original textual_inversion repo saved an nn.ParameterDict
    pdict = {"string_to_token": {"*": 265}, "string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(t)})}
    torch.save(pdict, tmp_path / "pdict.pt")
    for name in ("param", "pdict"):
        emb = read_embedding(tmp_path / f"{name}.pt")
        assert emb.token == name and torch.equal(emb.vectors, t) and not emb.vectors.requires_grad


def test_kohya_and_sdxl(tmp_path):
    t = rand(5, 768)
    safetensors.torch.save_file({"emb_params": t}, tmp_path / "kohya_style.safetensors")
    emb = read_embedding(tmp_path / "kohya_style.safetensors")
    assert emb.token == "kohya_style" and torch.equal(emb.vectors, t) and emb.metadata["format"] == "kohya"

    # an SDXL file reads (both encoders' vectors side by side); it is refused where it does not fit (test_sdxl_ti.py)
    sdxl = tmp_path / "xl.safetensors"
    safetensors.torch.save_file({"clip_l": rand(2, 768), "clip_g": rand(2, 1280)}, sdxl)
    emb = read_embedding(sdxl)
    assert emb.token == "xl" and emb.widths == (768, 1280) and emb.vectors.shape == (2, 2048)
    with pytest.raises(EmbeddingError, match="SDXL") as err:
        check_width(emb, 1024, "sd2")
    one_line_naming(err, sdxl)
    safetensors.torch.save_file({"clip_g": rand(2, 1280)}, sdxl)
    with pytest.raises(EmbeddingError, match="half an SDXL") as err:
        read_embedding(sdxl)
    one_line_naming(err, sdxl)


def test_format_found_by_content_not_extension(tmp_path):
    t = rand(2, 768)
    write_embedding(tmp_path / "a.safetensors", Embedding("<a>", t))
    write_embedding(tmp_path / "b.pt", Embedding("<b>", t), format="a1111")
    os.rename(tmp_path / "a.safetensors", tmp_path / "a.bin")
    os.rename(tmp_path / "b.pt", tmp_path / "b.safetensors")
    assert read_embedding(tmp_path / "a.bin").token == "<a>"
    assert read_embedding(tmp_path / "b.safetensors").metadata["format"] == "a1111"


def test_embedding_normalises_its_tensor():
    param = torch.nn.Parameter(rand(3, 768).half())
    emb = Embedding("<t>", param)
    assert emb.vectors.dtype == torch.float32 and not emb.vectors.requires_grad
    assert emb.num_vectors == 3 and emb.width == 768
    param.data.zero_()  # the Embedding is a snapshot, not a view into training state
    assert emb.vectors.abs().sum() > 0
    with pytest.raises(EmbeddingError, match="NaN"):
        Embedding("<t>", torch.full((1, 768), float("nan")))
    with pytest.raises(EmbeddingError, match="shape"):
        Embedding("<t>", rand(1, 2, 768))


# ---------------------------------------------------------------- the paper's files


@needs_paper
def test_paper_embeddings_load():
    for path in PAPER_FILES:
        emb = read_embedding(path)
        assert emb.token == path.stem and emb.vectors.shape == (64, 1024) and emb.vectors.abs().mean() > 0.1
        assert emb.metadata["format"] == "a1111" and emb.metadata["step"] in ("49999", "50000", "100000")
    everything = load_embeddings([PAPER])
    assert sorted(everything) == [p.stem for p in PAPER_FILES]


@needs_paper
def test_paper_embedding_converts_to_ours(tmp_path):
    src = read_embedding(PAPER / "chexpert_pneumonia.pt")
    back = read_embedding(write_embedding(tmp_path / "chexpert_pneumonia.safetensors", src))
    assert back.token == "chexpert_pneumonia" and torch.equal(back.vectors, src.vectors)
    assert back.metadata["family"] == "sd2" and back.metadata["base_model"] == "checkpoints_512-base-ema"


# ---------------------------------------------------------------- diffusers accepts our files


def _clip_alphabet():
    # GPT-2/CLIP byte-level alphabet in the order CLIP's vocab lists it: printable bytes as themselves, then the rest
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


@pytest.fixture(scope="module")
def diffusers_pipe(tmp_path_factory):
    """A CLIPTokenizer with the real 49,408-entry vocab, a tiny random CLIPTextModel, and diffusers' loader mixin."""
    transformers = pytest.importorskip("transformers")
    from diffusers.loaders import TextualInversionLoaderMixin

    folder = tmp_path_factory.mktemp("clip")
    lines = gzip.open(ROOT / "mini_ldm" / "vocab" / "bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8").split("\n")
    merges = lines[1:48895]  # line 0 is a version header
    alphabet = _clip_alphabet()
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")

    class Pipe(TextualInversionLoaderMixin):
        hf_device_map = None  # read by the mixin when it looks for accelerate hooks

        def __init__(self):
            self.tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
            torch.manual_seed(0)
            config = transformers.CLIPTextConfig(
                vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                num_attention_heads=4, max_position_embeddings=77,
            )
            self.text_encoder = transformers.CLIPTextModel(config).eval()

        @property
        def components(self):
            return {"tokenizer": self.tokenizer, "text_encoder": self.text_encoder}

    pipe = Pipe()
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    return pipe


def _rows(pipe, tokens):
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    return pipe.text_encoder.get_input_embeddings().weight[ids].detach()


def test_diffusers_loads_our_file(tmp_path, diffusers_pipe):
    multi = Embedding("<effusion>", rand(3, 32, seed=1), None, {"step": "10", "init_text": "fluid"})
    single = Embedding("<heart>", rand(1, 32, seed=2))
    diffusers_pipe.load_textual_inversion(str(write_embedding(tmp_path / "effusion.safetensors", multi)))
    diffusers_pipe.load_textual_inversion(str(write_embedding(tmp_path / "heart.safetensors", single)))
    # n vectors become token, token_1, ..., token_{n-1} in diffusers
    names = ["<effusion>", "<effusion>_1", "<effusion>_2"]
    assert all(t in diffusers_pipe.tokenizer.get_vocab() for t in names + ["<heart>"])
    assert torch.equal(_rows(diffusers_pipe, names), multi.vectors)
    assert torch.equal(_rows(diffusers_pipe, ["<heart>"]), single.vectors)
    assert diffusers_pipe.maybe_convert_prompt("a <effusion>", diffusers_pipe.tokenizer) == "a " + " ".join(names)


def test_diffusers_loads_our_a1111_file(tmp_path, diffusers_pipe):
    emb = Embedding("<cardio>", rand(2, 32, seed=3))
    diffusers_pipe.load_textual_inversion(str(write_embedding(tmp_path / "cardio.pt", emb, format="a1111")))
    assert torch.equal(_rows(diffusers_pipe, ["<cardio>", "<cardio>_1"]), emb.vectors)  # diffusers takes 'name'


# ---------------------------------------------------------------- hostile and broken files


class _Plant:
    """Unpickling this would create a file: the stand-in for arbitrary code in a .pt."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_pickled_program_is_refused(tmp_path, how):
    marker = tmp_path / "planted"
    path = tmp_path / "evil.pt"
    payload = {"string_to_param": {"*": _Plant(str(marker))}, "name": "evil"}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(EmbeddingError, match="refused") as err:
        read_embedding(path)
    one_line_naming(err, path)
    assert not marker.exists()
    # control: loaded unsafely, the same file really does run its payload
    with open(path, "rb") as f:
        torch.load(f, weights_only=False) if how == "torch.save" else pickle.load(f)
    assert marker.exists()


def test_broken_files(tmp_path):
    good = write_embedding(tmp_path / "good.safetensors", Embedding("<g>", rand(4, 768))).read_bytes()
    good_pt = write_embedding(tmp_path / "good.pt", Embedding("<g>", rand(4, 768)), format="a1111").read_bytes()
    cases = {
        "cut.safetensors": good[: len(good) // 2],
        "cut.pt": good_pt[: len(good_pt) // 2],
        "cut_header.pt": good_pt[:20],
        "garbage.bin": b"this is not an embedding" * 10,
        "empty.pt": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(EmbeddingError) as err:
            read_embedding(tmp_path / name)
        one_line_naming(err, tmp_path / name)

    safetensors.torch.save_file({"a": rand(2, 768), "b": rand(2, 768), "c": rand(2, 768)}, tmp_path / "model.safetensors")
    torch.save([rand(2, 768)], tmp_path / "list.pt")
    torch.save({"<i>": torch.arange(768)}, tmp_path / "ints.bin")
    for name, why in [("model.safetensors", "not an embedding"), ("list.pt", "list"), ("ints.bin", "floating")]:
        with pytest.raises(EmbeddingError, match=why) as err:
            read_embedding(tmp_path / name)
        one_line_naming(err, tmp_path / name)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    out = write_embedding(tmp_path / "e.safetensors", Embedding("<old>", rand(1, 768)))

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_embedding(out, Embedding("<new>", rand(1, 768)))
    monkeypatch.undo()
    assert read_embedding(out).token == "<old>"
    assert [p.name for p in tmp_path.iterdir()] == ["e.safetensors"]


# ---------------------------------------------------------------- registry, checks, paths


def test_load_embeddings_files_and_folders(tmp_path):
    folder = tmp_path / "embs"
    write_embedding(folder / "a.safetensors", Embedding("<a>", rand(1, 768)))
    write_embedding(folder / "b.pt", Embedding("b", rand(2, 768)), format="a1111")
    (folder / "notes.txt").write_text("ignored")
    write_embedding(folder / "sub" / "c.safetensors", Embedding("<c>", rand(1, 768)))  # not recursive
    single = write_embedding(tmp_path / "d.safetensors", Embedding("<d>", rand(1, 768)))
    found = load_embeddings([folder, single])
    assert sorted(found) == ["<a>", "<d>", "b"] and found["b"].num_vectors == 2
    assert sorted(load_embeddings(folder)) == ["<a>", "b"]  # one path on its own also works

    dup = write_embedding(tmp_path / "other.safetensors", Embedding("<a>", rand(1, 768)))
    with pytest.raises(EmbeddingError, match="twice") as err:
        load_embeddings([folder, dup])
    assert str(folder / "a.safetensors") in str(err.value) and str(dup) in str(err.value)
    with pytest.raises(EmbeddingError, match="no such"):
        load_embeddings([tmp_path / "missing"])


def test_check_width_message(tmp_path):
    emb = read_embedding(write_embedding(tmp_path / "e.safetensors", Embedding("<e>", rand(2, 768))))
    check_width(emb, 768, "sd1")
    with pytest.raises(EmbeddingError) as err:
        check_width(emb, 1024, "sd2")
    assert str(err.value) == (
        f"{tmp_path / 'e.safetensors'}: embedding is 768 wide but the sd2 model expects 1024-wide vectors "
        "(sd1 embeddings do not work on sd2 models)"
    )


def test_intermediate_path(tmp_path):
    assert intermediate_path(tmp_path / "effusion.safetensors", 500) == tmp_path / "effusion-500.safetensors"


# ---------------------------------------------------------------- the convert CLI


def convert(*args):
    return subprocess.run(
        [sys.executable, "-m", "ti.convert", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_convert_cli(tmp_path):
    src = write_embedding(tmp_path / "in.safetensors", Embedding("<effusion>", rand(4, 1024), None, {"step": "7"}))
    r = convert(src, tmp_path / "effusion.pt", "--token", "effusion")
    assert r.returncode == 0, r.stderr
    raw = torch.load(tmp_path / "effusion.pt", map_location="cpu", weights_only=True)
    assert raw["name"] == "effusion" and raw["step"] == 7
    r = convert(tmp_path / "effusion.pt", tmp_path / "back.safetensors")
    assert r.returncode == 0, r.stderr
    back = read_embedding(tmp_path / "back.safetensors")
    assert back.token == "effusion" and torch.equal(back.vectors, read_embedding(src).vectors)

    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
    r = convert(tmp_path / "bad.pt", tmp_path / "out.safetensors")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out.safetensors").exists()


def test_convert_help_documents_every_flag():
    r = convert("--help")
    assert r.returncode == 0
    for flag in ("--format", "--token", "IN", "OUT", "ours", "a1111"):
        assert flag in r.stdout
