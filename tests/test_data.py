"""ti/data.py and ti/templates.py on small synthetic image folders (no model needed)."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from readers.images import DataError, find_images, load_image
from ti.data import LatentCache, cache_key, cached_latents, load_dataset, to_training_tensor
from ti.templates import BUILTIN_TEMPLATES, TemplateError, load_templates, render


def noise_rgb(h, w, seed=0):
    """A random RGB image with values 20..235, so nothing is all-zero or saturated."""
    return np.random.default_rng(seed).integers(20, 236, size=(h, w, 3), dtype=np.uint8)


def save(arr, path, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    """A messy concept folder: formats, nested subfolders, a caption, a csv and a corrupt png."""
    root = tmp_path / "concept"
    save(noise_rgb(40, 48, 1), root / "a.png")
    (root / "a.txt").write_text("left pleural\n effusion ")
    save(noise_rgb(33, 35, 2), root / "b.jpg")
    save(noise_rgb(30, 30, 3), root / "sub" / "c.bmp")
    save(noise_rgb(36, 32, 4), root / "sub" / "deeper" / "d.TIF")
    save(noise_rgb(32, 40, 5), root / "sub" / "e.webp")
    (root / "notes.csv").write_text("id,label\n1,effusion\n")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return root


class Warnings(list):
    def __call__(self, message):
        self.append(message)


# --------------------------------------------------------------------------- find_images / load_image

def test_find_images_recursive_sorted_and_skips_non_images(folder):
    warns = Warnings()
    paths = find_images(folder, warns)
    rel = [p.relative_to(folder).as_posix() for p in paths]
    assert rel == ["a.png", "b.jpg", "broken.png", "sub/c.bmp", "sub/deeper/d.TIF", "sub/e.webp"]
    assert warns == ["skipping notes.csv: not an image"]  # one line; a.txt is a caption, not warned about
    assert find_images(folder, Warnings()) == paths  # deterministic


def test_find_images_skips_the_listing_our_tools_write_silently(tmp_path):
    """prepare.py and sample.py's dataset jobs write metadata.csv beside their images; reading their output
    (train.py --data, evaluate.py) must not warn about it. Elsewhere in the tree it is just a stray file."""
    (tmp_path / "neg").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "neg" / "00000.png")
    for listing in ("metadata.csv", "neg/metadata.csv"):
        (tmp_path / listing).write_text("file_name\nneg/00000.png\n")
    warns = Warnings()
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path, warns)] == ["neg/00000.png"]
    assert warns == ["skipping neg/metadata.csv: not an image"]


def test_find_images_missing_or_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="no images found in .*empty"):
        find_images(tmp_path / "empty", Warnings())


def test_load_image_8bit_grayscale(tmp_path):
    arr = np.random.default_rng(0).integers(10, 200, size=(20, 30), dtype=np.uint8)
    im = load_image(save(arr, tmp_path / "l.png"))
    assert im.mode == "RGB" and im.size == (30, 20)
    out = np.asarray(im)
    for c in range(3):  # gray copied to every channel, not stretched
        np.testing.assert_array_equal(out[..., c], arr)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_load_image_16bit_scaled_to_full_range(tmp_path, suffix):
    arr = np.linspace(1000, 40000, 24 * 32).reshape(24, 32).astype(np.uint16)
    path = tmp_path / f"x16{suffix}"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    assert out.shape == (24, 32, 3) and out.min() == 0 and out.max() == 255
    expected = np.rint((arr.astype(np.float64) - 1000) * 255 / 39000)
    np.testing.assert_array_equal(out[..., 0], expected)  # linear stretch, order preserved


def test_load_image_float_and_constant_images(tmp_path):
    flt = Image.fromarray(np.linspace(-3.0, 5.0, 100, dtype=np.float32).reshape(10, 10), mode="F")
    flt.save(tmp_path / "f.tif")
    out = np.asarray(load_image(tmp_path / "f.tif"))
    assert out.min() == 0 and out.max() == 255
    const = Image.fromarray(np.full((8, 8), 1234, dtype=np.uint16))
    const.save(tmp_path / "const.png")
    assert np.asarray(load_image(tmp_path / "const.png")).max() == 0  # no division by zero, black


def test_load_image_rgba_composited_on_black(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., :3] = 200
    arr[..., 3] = 255
    arr[0, 0, 3] = 0      # fully transparent -> black
    arr[1, 1, 3] = 128    # half transparent -> about half the colour
    out = np.asarray(load_image(save(arr, tmp_path / "rgba.png", "RGBA")))
    assert out.shape == (4, 4, 3)
    assert (out[0, 0] == 0).all() and (out[2, 2] == 200).all() and abs(int(out[1, 1, 0]) - 100) <= 1


def test_load_image_palette_la_cmyk_and_1bit(tmp_path):
    rgb = Image.fromarray(noise_rgb(16, 16))
    rgb.convert("P", palette=Image.ADAPTIVE).save(tmp_path / "p.png")
    Image.fromarray(noise_rgb(16, 16)[..., :2], mode="LA").save(tmp_path / "la.png")
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.eye(16, dtype=bool)).save(tmp_path / "one.png")
    for name in ["p.png", "la.png", "cmyk.jpg", "one.png"]:
        im = load_image(tmp_path / name)
        assert im.mode == "RGB" and im.size == (16, 16) and np.asarray(im).max() > 0, name
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "one.png"))[..., 0], np.eye(16) * 255)


def test_load_image_corrupt_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    with pytest.raises(DataError, match="bad.png"):
        load_image(bad)
    truncated = tmp_path / "trunc.png"
    save(noise_rgb(64, 64), tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:200])
    with pytest.raises(DataError, match="trunc.png"):
        load_image(truncated)


# --------------------------------------------------------------------------- to_training_tensor / load_dataset

def test_prepare_shape_range_and_center_crop():
    im = Image.fromarray(noise_rgb(517, 300))  # odd size, portrait: 300 wide, 517 high
    t = to_training_tensor(im, 64)
    assert t.shape == (3, 64, 64) and t.dtype == torch.float32
    assert -1.0 <= t.min() and t.max() <= 1.0 and t.std() > 0.05
    assert torch.equal(to_training_tensor(im, 64, "center"), t)
    # center crop == resize the short side, then take the middle square
    resized = im.resize((64, round(517 * 64 / 300)), Image.LANCZOS)
    top = (resized.height - 64) // 2
    ref = np.asarray(resized.crop((0, top, 64, top + 64)), dtype=np.float32) / 127.5 - 1
    np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), ref, atol=1e-6)


def test_prepare_random_crop_reproducible_and_upscales_small_images():
    im = Image.fromarray(noise_rgb(300, 517))
    a = [to_training_tensor(im, 32, "random", random.Random(7)) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    rng = random.Random(7)
    crops = [to_training_tensor(im, 32, "random", rng) for _ in range(4)]
    assert any(not torch.equal(crops[0], c) for c in crops[1:])
    assert to_training_tensor(Image.fromarray(noise_rgb(10, 14)), 32).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="crop"):
        to_training_tensor(im, 32, "top")


def test_load_dataset_skips_unreadable_reads_captions(folder):
    warns = Warnings()
    items = load_dataset(folder, 16, warn=warns)
    assert [it.path.name for it in items] == ["a.png", "b.jpg", "c.bmp", "d.TIF", "e.webp"]
    assert all(it.image.shape == (3, 16, 16) and not it.flipped for it in items)
    assert items[0].caption == "left pleural effusion" and items[1].caption == ""
    assert len(warns) == 2 and warns[0] == "skipping notes.csv: not an image"
    assert warns[1].startswith("cannot read image") and "broken.png" in warns[1] and warns[1].endswith("skipping it")


def test_load_dataset_flip_doubles_and_mirrors(folder):
    plain = load_dataset(folder, 16, warn=Warnings())
    flipped = load_dataset(folder, 16, flip=True, warn=Warnings())
    assert len(flipped) == 2 * len(plain)
    for i, it in enumerate(plain):
        orig, mirror = flipped[2 * i], flipped[2 * i + 1]
        assert torch.equal(orig.image, it.image) and mirror.flipped and mirror.caption == it.caption
        assert torch.equal(mirror.image, it.image.flip(-1)) and not torch.equal(mirror.image, it.image)


def test_load_dataset_random_crop_seeded(folder):
    a = load_dataset(folder, 16, "random", warn=Warnings(), seed=3)
    b = load_dataset(folder, 16, "random", warn=Warnings(), seed=3)
    assert all(torch.equal(x.image, y.image) for x, y in zip(a, b))


def test_load_dataset_nothing_readable(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="could be read"):
        load_dataset(tmp_path, 16, warn=Warnings())


# --------------------------------------------------------------------------- latent cache

def fake_encode(images):
    """A fixed stand-in for the VAE encoder: 4x4 average pool, then fixed channel mixes for mean/logvar."""
    g = torch.Generator().manual_seed(0)
    w_mean, w_logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g) * 0.5
    pooled = F.avg_pool2d(images, 4)  # (B, 3, r, r)
    mean = torch.einsum("oc,bchw->bohw", w_mean, pooled)
    logvar = torch.einsum("oc,bchw->bohw", w_logvar, pooled) - 1.0
    return mean, logvar


def test_latent_cache_shapes_and_sampling(folder):
    items = load_dataset(folder, 16, flip=True, warn=Warnings())
    calls = []
    cache = LatentCache.build(items, lambda x: calls.append(len(x)) or fake_encode(x), batch_size=3, progress=False)
    assert len(cache) == 10 and calls == [3, 3, 3, 1]
    assert cache.mean.shape == cache.std.shape == (10, 4, 4, 4) and cache.mean.dtype == torch.float32
    mean, logvar = fake_encode(torch.stack([it.image for it in items]))
    torch.testing.assert_close(cache.mean, mean)
    torch.testing.assert_close(cache.std, torch.exp(0.5 * logvar))
    assert cache.caption(0) == cache.caption(1) == "left pleural effusion" and "(flipped)" in cache.names[1]

    idx = [4, 0, 4]
    z = cache.sample(idx, torch.Generator().manual_seed(1))
    noise = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z, mean[idx] + torch.exp(0.5 * logvar[idx]) * noise)
    assert not torch.equal(z[0], z[2])  # same image, fresh noise each draw


def test_latent_cache_rejects_bad_encoder_output(folder):
    items = load_dataset(folder, 16, warn=Warnings())
    with pytest.raises(ValueError, match="encode returned"):
        LatentCache.build(items, lambda x: (torch.zeros(len(x), 4, 4, 4), torch.zeros(len(x), 4, 2, 2)),
                          progress=False)


def test_latent_cache_save_load_round_trip(folder, tmp_path):
    cache = LatentCache.build(load_dataset(folder, 16, warn=Warnings()), fake_encode, progress=False)
    file = tmp_path / "cache" / "l.safetensors"
    cache.save(file, key="abc")
    back = LatentCache.load(file, key="abc")
    assert torch.equal(back.mean, cache.mean) and torch.equal(back.std, cache.std)
    assert back.captions == cache.captions and back.names == cache.names and back.file == file
    with pytest.raises(DataError, match="key"):
        LatentCache.load(file, key="other")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.safetensors"):
        LatentCache.load(tmp_path / "junk.safetensors")


def test_cache_key_changes_with_inputs(folder):
    paths = find_images(folder, Warnings())
    key = cache_key(paths, 16, "center", False, "sd2")
    assert cache_key(paths, 16, "center", False, "sd2") == key
    assert cache_key(paths, 16, "center", False, "sd2", seed=5) == key  # seed only matters for random crops
    others = [cache_key(paths, 32, "center", False, "sd2"), cache_key(paths, 16, "random", False, "sd2"),
              cache_key(paths, 16, "center", True, "sd2"), cache_key(paths, 16, "center", False, "sd1"),
              cache_key(paths[1:], 16, "center", False, "sd2")]
    assert len({key, *others}) == 6
    assert cache_key(paths, 16, "random", False, "sd2", 1) != cache_key(paths, 16, "random", False, "sd2", 2)
    save(noise_rgb(40, 48, 99), folder / "a.png")  # same file, new content and size
    assert cache_key(paths, 16, "center", False, "sd2") != key
    key2 = cache_key(paths, 16, "center", False, "sd2")
    (folder / "a.txt").write_text("a different caption")
    assert cache_key(paths, 16, "center", False, "sd2") != key2


def test_cached_latents_skips_encoding_on_rerun(folder, tmp_path):
    calls = []

    def encode(x):
        calls.append(len(x))
        return fake_encode(x)

    args = dict(encode=encode, model_id="tiny", cache_dir=tmp_path / "cache", resolution=16,
                warn=Warnings(), progress=False)
    first = cached_latents(folder, **args)
    n = len(calls)
    second = cached_latents(folder, **args)
    assert len(calls) == n and second.file == first.file  # loaded, not re-encoded
    assert second.reused and not first.reused
    assert torch.equal(first.mean, second.mean) and second.captions == first.captions
    save(noise_rgb(30, 30, 42), folder / "sub" / "c.bmp")  # an image changed: encode again, new file
    third = cached_latents(folder, **args)
    assert len(calls) > n and third.file != first.file and not torch.equal(third.mean, first.mean)
    third.file.write_bytes(b"damaged")  # a damaged cache file is reported and rebuilt, not fatal
    n, warns = len(calls), Warnings()
    fourth = cached_latents(folder, **{**args, "warn": warns})
    assert len(calls) > n and torch.equal(fourth.mean, third.mean)
    assert any("cannot use latent cache" in w and w.endswith("re-encoding") for w in warns)


# --------------------------------------------------------------------------- templates

@pytest.mark.parametrize("name", list(BUILTIN_TEMPLATES))
def test_builtin_templates_render(name):
    templates = load_templates(name)
    assert templates and all("[name]" in t for t in templates)
    for t in templates:
        text = render(t, "<effusion>", "frontal view")
        assert "<effusion>" in text and "[" not in text
    if name in ("object", "style"):
        assert 10 <= len(templates) <= 20 and len(set(templates)) == len(templates)


def test_default_and_filewords_render():
    assert load_templates("name") == ["[name]"]
    assert render("[name]", "<x>") == "<x>"
    assert render("[name], [filewords]", "<x>", "pleural effusion") == "<x>, pleural effusion"
    assert render("[name], [filewords]", "<x>", "") == "<x>"  # no dangling comma without a caption
    assert render("a photo of a [name]", "<x>", "ignored") == "a photo of a <x>"


def test_template_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# my templates\n\na chest x-ray showing [name]\n  [filewords], [name]  \n")
    assert load_templates(f) == ["a chest x-ray showing [name]", "[filewords], [name]"]
    assert load_templates(str(f)) == load_templates(f)


def test_template_errors(tmp_path):
    with pytest.raises(TemplateError, match="name, object, style, filewords"):
        load_templates("nonexistent")
    bad = tmp_path / "bad.txt"
    bad.write_text("[name] ok\n# comment\na photo of a thing\n")
    with pytest.raises(TemplateError, match=r"bad.txt:3"):
        load_templates(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(TemplateError, match="no templates"):
        load_templates(empty)
    from mini_ldm.errors import UserError
    assert issubclass(TemplateError, UserError) and issubclass(DataError, UserError)  # the CLIs print them as one line
