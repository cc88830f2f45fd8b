"""What a prompt says, as text: where its learned tokens stand, and its composable parts "A:0.7 AND B:0.3".

Learned tokens are matched as whole words, case ignored (`match_key`), everywhere a prompt is read: sampling,
training's templates, the dataset job, the settings grid and the membership audit. No torch here, so the CLIs
can check prompts and token names with their flags; prompt.py turns the pieces into the encoders' input.
"""
import re


def match_key(name: str) -> str:
    """What a prompt matches a learned token by: case is ignored, so two tokens with one key are one word."""
    return name.lower()


def find_learned(learned, text: str) -> str | None:
    """The name among `learned` (names, or a dict of them) that `text` is, matched by `match_key`; else None."""
    by_key = {match_key(name): name for name in learned}
    return by_key.get(match_key(text.strip()))


def bracketed_words(text: str) -> list[str]:
    """The words in angle brackets ("<effusion>"): the usual spelling of a learned token, meant as one."""
    return re.findall(r"<[^<>\s]+>", text)


def split_learned(text: str, learned: dict) -> list:
    """Split text into plain-text pieces and learned-token names, e.g. ["a ", "<ptx>", " with ", "<effusion>"]."""
    if not learned:
        return [text]
    names = sorted(learned, key=len, reverse=True)  # longest first, so "<a-b>" wins over "<a"
    pattern = re.compile(r"(?<![\w])(" + "|".join(re.escape(n) for n in names) + r")(?![\w])", re.IGNORECASE)
    by_key = {match_key(n): n for n in names}
    pieces, start = [], 0
    for m in pattern.finditer(text):
        pieces += [text[start:m.start()], by_key[match_key(m.group(1))]]
        start = m.end()
    return pieces + [text[start:]]


# --- composable prompts -------------------------------------------------------------------------

# "AND" in capitals, as a word of its own between whitespace; "android", "And" and "x-AND-y" are text.
_AND = re.compile(r"(?<=\s)AND(?=\s)")
# A trailing ":number" is the weight ("chexpert_pleural_effusion:0.5", "x : -1", "a:.5", "a:2."). Only the
# last colon counts and only when a plain number follows it, so "view: PA" and "<ptx>" stay text.
_WEIGHT = re.compile(r"^(.*?)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*$", re.DOTALL)


def parse_and(text: str) -> list:
    """"A:w1 AND B:w2 AND C" -> [("A", w1), ("B", w2), ("C", 1.0)]; a prompt without AND is one sub-prompt.

    As in AUTOMATIC1111, a trailing ":number" is a weight even without AND: "a cat:0.5" is "a cat" at half
    the guidance. (To keep a literal "16:9" at the end of a prompt, end the prompt with a comma.)
    """
    parts = []
    for part in _AND.split(text):
        m = _WEIGHT.match(part)
        parts.append((m.group(1).strip(), float(m.group(2))) if m else (part.strip(), 1.0))
    return parts


def format_and(parts: list) -> str:
    """[("A", 0.7), ("B", 0.3)] -> "A:0.7 AND B:0.3" (weight 1 written out too), which parse_and reads back."""
    return " AND ".join(f"{text}:{format_weight(w)}" for text, w in parts)


def format_weight(w: float) -> str:
    """Short and exact enough to read back: 0.7, 1, 0.25 (rounded to 6 decimals, as 1 - 0.3 is 0.69999...)."""
    text = repr(round(float(w), 6))
    return text[:-2] if text.endswith(".0") else text
