"""mini_ldm.tokenizer against transformers' CLIPTokenizer built from the same shipped merges file."""

import gzip
import json
import random

import pytest

from mini_ldm.tokenizer import VOCAB_GZ, CLIPTokenizer

transformers = pytest.importorskip("transformers")


def write_hf_folder(folder, pad_token="<|endoftext|>", config_pad_token=None):
    """Write a diffusers-style tokenizer/ folder from the shipped gz file, built independently of mini_ldm:
    vocab ids follow CLIP's own recipe (byte alphabet, the same with '</w>', merges, two specials)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    alphabet = [chr(b) for b in printable] + [chr(256 + k) for k in range(256 - len(printable))]
    merges = gzip.open(VOCAB_GZ, "rt", encoding="utf-8").read().split("\n")[1:48895]
    tokens = alphabet + [a + "</w>" for a in alphabet] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps({**specials, "pad_token": pad_token}))
    config = {**specials, "pad_token": config_pad_token or pad_token, "model_max_length": 77, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory):
    return write_hf_folder(tmp_path_factory.mktemp("sd1") / "tokenizer")


@pytest.fixture(scope="module")
def sd2_folder(tmp_path_factory):
    # Real SD2 folders say "<|endoftext|>" in tokenizer_config.json but "!" in special_tokens_map.json;
    # transformers takes the latter, so the pad id is 0.
    return write_hf_folder(tmp_path_factory.mktemp("sd2") / "tokenizer", "!", config_pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def hf_sd1(sd1_folder):
    return transformers.CLIPTokenizer.from_pretrained(sd1_folder)


@pytest.fixture(scope="module")
def hf_sd2(sd2_folder):
    return transformers.CLIPTokenizer.from_pretrained(sd2_folder)


def hf_ids(hf, text):
    return hf(text, padding="max_length", max_length=77, truncation=True).input_ids


LONG = " ".join(f"word{i} of a long, long prompt" for i in range(40))
PROMPTS = [
    "", " ", "\t\n", "a photo of a cat", "A Photo Of A CAT", "hello!", "hello!!!", "wait... what?!",
    "1234", "3.14", "1,000,000", "x2 3x 2nd", "café naïve", "cafe\u0301 nai\u0308ve", "Ångström", "straße",
    "日本語のテキスト", "中文字符", "한국어", "Привет, мир", "مرحبا", "emoji 😀🎉 test", "👍🏽", "👨‍👩‍👧",
    "tabs\tand\nnewlines\r\n  and   spaces", "  leading and trailing  ", "\u00a0nbsp\u3000ideographic space",
    "it's", "DON'T", "we're they've I'm you'll he'd", "'s'", "''quoted''", "rock'n'roll",
    "<effusion> chest x-ray, PA view", "<effusion>:0.5 AND <pneumothorax>:0.5", "[cardiomegaly], (edema:1.2)",
    "frontal CXR, AP supine, portable", "x-ray of the left lung with pleural effusion; no pneumothorax.",
    "a<|endoftext|>b", "<|startoftext|>", "<|ENDOFTEXT|>", "</w>", "zero\u200bwidth", "İstanbul", "ﬁne",
    "e\u0301\u0301\u0301", "\x00\x01\x7f control", "ｆｕｌｌｗｉｄｔｈ", "①②③ ٣ ½", "मनुष्य", "ไทย", LONG,
]


def random_strings(n=300, seed=0):
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
              (0x590, 0x6FF), (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00),
              (0x1F300, 0x1F64F), (0x2000, 0x206F), (0xFF00, 0xFFEF), (0x1D400, 0x1D4FF)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(0, 60)):
            r = rng.random()
            if r < 0.15:
                chars.append(rng.choice([" ", "  ", "\t", "\n", "'", "'s", "'T", "!", "-", ".", "0", "9"]))
            else:
                lo, hi = rng.choice(ranges)
                chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    return out


ALL = PROMPTS + random_strings()


def test_vocab_layout():
    tok = CLIPTokenizer.default()
    assert tok.vocab_size == 49408 and (tok.bos_id, tok.eos_id, tok.pad_id, tok.max_length) == (49406, 49407, 49407, 77)
    assert tok.id_to_token(0) == "!" and tok.id_to_token(256) == "!</w>" and tok.token_to_id("<|endoftext|>") == 49407
    assert tok.token_to_id("cat</w>") == tok.encode("cat")[0]


def test_sd1_matches_transformers(hf_sd1):
    tok = CLIPTokenizer.default()
    for text in ALL:
        assert tok(text) == hf_ids(hf_sd1, text), text
        assert tok.encode(text) == hf_sd1(text, add_special_tokens=False).input_ids, text


def test_sd2_tokenizer_follows_transformers(hf_sd2, sd2_folder):
    # SD2 pads with "!" (id 0) and transformers makes the pad token special, so every "!" typed in a prompt
    # becomes id 0 ("!!" gives 0 0 instead of the merged 748; huggingface/diffusers#4153). OpenCLIP and
    # A1111 do not, but diffusers is the reference for our images, so both the shipped tokenizer with
    # pad 0 (single files) and a folder's tokenizer follow transformers, "!" included.
    for tok in (CLIPTokenizer.default(pad_id=0), CLIPTokenizer.from_folder(sd2_folder)):
        assert tok.pad_id == 0
        for text in ALL + ["hello !!", "wow! a lung!", "!"]:
            assert tok(text) == hf_ids(hf_sd2, text), text


def test_sd2_exclamation_mark_quirk(hf_sd1, hf_sd2):
    assert CLIPTokenizer.default(pad_id=0).encode("hello !!") == [3306, 0, 0]
    assert hf_sd2("hello !!", add_special_tokens=False).input_ids == [3306, 0, 0]  # the transformers quirk
    assert CLIPTokenizer.default().encode("hello !!") == hf_sd1("hello !!", add_special_tokens=False).input_ids \
        == [3306, 748]  # SD1 pads with EOS, so "!" stays ordinary text


def test_from_folder_sd1(sd1_folder, hf_sd1):
    tok = CLIPTokenizer.from_folder(sd1_folder)
    assert tok.pad_id == 49407 and tok.vocab_size == 49408
    for text in PROMPTS:
        assert tok(text) == hf_ids(hf_sd1, text), text


def test_from_folder_missing_files(tmp_path):
    with pytest.raises(ValueError, match="vocab.json"):
        CLIPTokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(ValueError, match="merges.txt"):
        CLIPTokenizer.from_folder(tmp_path)


def test_framing_and_truncation():
    tok = CLIPTokenizer.default(pad_id=0)
    ids = tok.encode(LONG)
    assert len(ids) > 75
    framed = tok(LONG)
    assert len(framed) == 77 and framed == [49406, *ids[:75], 49407]
    assert tok("") == [49406, 49407] + [0] * 75
    assert tok.frame([1, 2]) == [49406, 1, 2, 49407] + [0] * 73


def test_decode_round_trip():
    tok = CLIPTokenizer.default()
    assert tok.decode(tok("A Chest X-ray,  PA view!")) == "a chest x - ray , pa view !"
    assert tok.decode(tok.encode("café 😀")) == "café 😀"
