"""CLIP's byte-level BPE tokenizer, built in memory on the `tokenizers` library.

Both SD1 (OpenAI CLIP ViT-L/14) and SD2 (OpenCLIP ViT-H/14) use the same 49,408-token vocabulary; they differ
only in the id that fills the 77-slot context after EOS (see `pad_id` below).

    tok = CLIPTokenizer.default()              # SD1 padding (49407); CLIPTokenizer.default(pad_id=0) for SD2
    tok("<effusion> chest x-ray, PA view")      # 77 ids: BOS, tokens, EOS, padding
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77  # the text encoders' positional-embedding length: BOS + 75 tokens + EOS

VOCAB_GZ = Path(__file__).parent / "vocab" / "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 48_894  # CLIP reads only the first 49152 - 256 - 2 merges of the file (after its version header)

# CLIP's word split. Contractions stay one piece, letters group into words, every digit is its own word, and
# a run of anything else (punctuation, emoji, combining marks) is one word. Whitespace matches nothing and is
# dropped. CLIP compiles this case-insensitively, but the text is already lowercase, so that changes nothing.
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for the bytes 0..255, in CLIP's vocabulary order (not byte order):
    the bytes that are printable in Latin-1 stand for themselves and come first; the other 68 are mapped
    to chr(256 + k) and follow. The order matters because it fixes ids 0..511 ("!" is id 0)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + k) for k in range(len(others))]


@functools.lru_cache(maxsize=1)
def _shipped_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Parse the shipped merges file once per process into (vocab, merges)."""
    lines = gzip.open(VOCAB_GZ, "rt", encoding="utf-8").read().split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : 1 + N_MERGES])
    alphabet = _byte_alphabet()
    # '</w>' marks a word's last symbol, so "a" inside "cat" and the word "a" are different tokens.
    # (The pre-tokeniser guarantees every word ends there; nothing is ever "continued" across words.)
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def _build(vocab: dict[str, int], merges: list[tuple[str, str]], specials: tuple[str, ...]) -> Tokenizer:
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges), end_of_word_suffix="</w>", unk_token=EOS))
    # NFC so that "é" typed as e + U+0301 tokenizes like the precomposed "é". No strip is needed: the
    # split below drops whitespace anyway. (No ftfy / html.unescape either; transformers 5 does not do it.)
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    # Split into CLIP words, then map each word's UTF-8 bytes onto the byte alphabet. The byte-level step
    # must not split again (use_regex=False) nor add a leading space: CLIP words carry no spaces at all.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # BOS/EOS typed literally in a prompt stay single tokens (matched on the raw, case-sensitive text),
    # as in transformers and OpenAI's CLIP.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (BOS, EOS, *specials)])
    return tok


class CLIPTokenizer:
    """Text -> CLIP token ids. `encode` gives the raw BPE ids; calling the object gives the framed 77 ids."""

    max_length = MAX_LENGTH

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], pad_id: int = 49407):
        # transformers makes the pad token special, so with SD2's pad "!" every "!" typed in a prompt
        # becomes id 0 rather than BPE's "!</w>" (diffusers issue #4153). OpenCLIP and AUTOMATIC1111 do
        # not do this, but diffusers is our reference for "same seed, same image", so we follow it.
        pad = next(token for token, i in vocab.items() if i == pad_id)
        self._tok = _build(vocab, merges, (pad,) if pad not in (BOS, EOS) else ())
        self.bos_id, self.eos_id = vocab[BOS], vocab[EOS]
        # What fills the slots after EOS. SD1 (and OpenAI CLIP) pad with EOS = 49407. SD2's diffusers folders
        # say pad_token "!", which is id 0: OpenCLIP, which SD2 was trained with, pads with zeros. The text
        # encoder sees every slot (causal mask, no attention mask), so the pad id changes the conditioning.
        self.pad_id = pad_id
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def default(cls, pad_id: int = 49407) -> "CLIPTokenizer":
        """The CLIP vocabulary shipped with mini_ldm. pad_id=49407 for SD1, 0 for SD2."""
        vocab, merges = _shipped_vocab()
        return cls(vocab, merges, pad_id)

    @staticmethod
    def shipped_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
        """(vocab {token: id}, merges) of the CLIP BPE shipped with mini_ldm (what a tokenizer/ folder holds)."""
        return _shipped_vocab()

    @classmethod
    def from_folder(cls, path: str | Path) -> "CLIPTokenizer":
        """A diffusers `tokenizer/` folder: vocab.json + merges.txt, pad token from the config files."""
        path = Path(path)
        for name in ("vocab.json", "merges.txt"):
            if not (path / name).is_file():
                raise ValueError(f"tokenizer folder {path} has no {name} (expected vocab.json and merges.txt)")
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        lines = (path / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        if any(len(m) != 2 for m in merges):
            raise ValueError(f"{path / 'merges.txt'}: every line after the header must be two symbols")
        pad = EOS
        for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the latter wins, as in transformers
            if (path / name).is_file():
                value = json.loads((path / name).read_text(encoding="utf-8")).get("pad_token") or pad
                pad = value["content"] if isinstance(value, dict) else value  # AddedToken dicts or plain strings
        if pad not in vocab:
            raise ValueError(f"tokenizer folder {path}: pad_token {pad!r} is not in vocab.json")
        return cls(vocab, merges, vocab[pad])

    def encode(self, text: str) -> list[int]:
        """Raw BPE ids of `text`: no BOS/EOS, no truncation."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def frame(self, ids: list[int]) -> list[int]:
        """BOS + the first 75 ids + EOS, padded to 77 with pad_id."""
        ids = [self.bos_id, *ids[: self.max_length - 2], self.eos_id]
        return ids + [self.pad_id] * (self.max_length - len(ids))

    def __call__(self, text: str) -> list[int]:
        return self.frame(self.encode(text))

    def decode(self, ids: list[int]) -> str:
        """Ids back to (normalised) text; BOS/EOS are skipped, each '</w>' becomes a space."""
        return self._tok.decode(ids).replace("</w>", " ").strip()

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self._tok.id_to_token(id)
