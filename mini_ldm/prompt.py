"""Prompt text -> token ids and learned vectors -> the text encoder's context.

A learned token (Textual Inversion) is not in CLIP's vocabulary. Instead of adding it there, we
find it in the prompt as a whole word and let its vectors take that many positions of the
77-token window, in the token-embedding output, before the transformer (AUTOMATIC1111's approach).
The vocabulary and the embedding matrix are never modified.
"""
import re
from dataclasses import dataclass

import torch


@dataclass
class Tokens:
    """A prompt as the text encoder will see it: 77 ids, some positions overridden by vectors."""

    ids: list  # len 77: BOS, tokens, EOS, padding
    vectors: list  # (position, tensor [n, width]) pairs that replace the embeddings at those positions


def split_learned(text: str, learned: dict) -> list:
    """Split text into plain-text pieces and learned-token names, e.g. ["a ", "<ptx>", " with ", "<effusion>"]."""
    if not learned:
        return [text]
    names = sorted(learned, key=len, reverse=True)  # longest first, so "<a-b>" wins over "<a"
    pattern = re.compile(r"(?<![\w])(" + "|".join(re.escape(n) for n in names) + r")(?![\w])", re.IGNORECASE)
    by_lower = {n.lower(): n for n in names}
    pieces, start = [], 0
    for m in pattern.finditer(text):
        pieces += [text[start:m.start()], by_lower[m.group(1).lower()]]
        start = m.end()
    return pieces + [text[start:]]


def tokenize(tokenizer, text: str, learned: dict) -> Tokens:
    """Frame one prompt into a single 77-token window, truncating what does not fit (as diffusers does)."""
    body, vectors = [], []
    room = tokenizer.max_length - 2
    for i, piece in enumerate(split_learned(text, learned)):
        if i % 2 == 0:  # plain text
            body += tokenizer.encode(piece)[: room - len(body)]
        else:
            vecs = learned[piece]
            if len(body) + len(vecs) > room:
                break  # an embedding is never cut in half
            vectors.append((1 + len(body), vecs))
            body += [tokenizer.pad_id] * len(vecs)  # placeholders, overwritten by the vectors
    ids = tokenizer.frame(body)
    return Tokens(ids, vectors)


def encode(text_encoder, tokens: Tokens, device) -> torch.Tensor:
    """Tokens -> context (1, 77, width)."""
    ids = torch.tensor([tokens.ids], device=device)
    embeds = text_encoder.embed_tokens(ids)  # (1, 77, width)
    if tokens.vectors:
        embeds = embeds.clone()
        for pos, vecs in tokens.vectors:
            embeds[0, pos:pos + len(vecs)] = vecs.to(embeds)
    return text_encoder(token_embeds=embeds)
