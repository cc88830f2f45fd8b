"""Prompt text -> token ids and learned vectors -> the text encoders' Conditioning of the UNet.

A learned token (Textual Inversion) is not in CLIP's vocabulary. Instead of adding it there, we
find it in the prompt as a whole word and let its vectors take that many positions of the
77-token window, in the token-embedding output, before the transformer (AUTOMATIC1111's approach).
The vocabulary and the embedding matrix are never modified.

Two prompt forms on top of that, both as in AUTOMATIC1111:
  composable prompts  "A:0.7 AND B:0.3" -> [("A", 0.7), ("B", 0.3)], one guidance term each (prompt_text.py);
  long prompts        more than 75 tokens become several 77-token windows, encoded one by one and
                      concatenated along the sequence (tokenize / encode_prompt). A prompt that
                      fits in 75 tokens is exactly one window, so it matches diffusers.

SDXL's UNet also takes the pooled text vector and six size numbers (original size, crop, target size);
`with_sizes` is the one place that turns them into its added conditioning, for sampling, training and
validation alike (`StableDiffusion.unet_conditioning` applies it where the model's family uses it).
"""
from dataclasses import dataclass, field, replace

import torch

from .errors import UserError
from .prompt_text import split_learned
from .unet import added_conditioning


@dataclass
class Tokens:
    """A prompt as the text encoder will see it: 77 ids, some positions overridden by vectors."""

    ids: list  # len 77: BOS, tokens, EOS, padding
    vectors: list  # (position, tensor [n, width]) pairs that replace the embeddings at those positions
    names: list = field(default_factory=list)  # the learned tokens placed in this window, in order


def first_window(tokenizer, text: str, learned: dict) -> Tokens:
    """One prompt in a single 77-token window, as training needs (one context per image): plain text past
    75 tokens is cut off, as diffusers does, but a learned token that does not fit is an error, never a
    silent drop, because without it the step would train nothing."""
    windows = tokenize(tokenizer, text, learned)
    dropped = [name for window in windows[1:] for name in window.names]
    if dropped:
        raise UserError(f"the training prompt {text!r} is too long: learned token {dropped[0]} does not fit in "
                        f"its {tokenizer.max_length}-token window; shorten the template or the caption")
    return windows[0]


@dataclass
class Conditioning:
    """What prompts give the UNet besides the latents, one row per image: the cross-attention context and, on
    SDXL, the pooled text vector and the added conditioning `y` built from it and the six size numbers
    (`with_sizes`). Guidance and batching only select and concatenate rows (`rows`, `cat`)."""

    context: torch.Tensor  # (B, 77 * windows, width); SDXL: both encoders' contexts side by side (2048)
    pooled: torch.Tensor | None = None  # (B, 1280) SDXL: bigG's pooled vector of the first window
    y: torch.Tensor | None = None  # (B, 2816) SDXL: the UNet's added conditioning (with_sizes)

    def rows(self, index) -> "Conditioning":
        """These rows (an index tensor or a slice) of every tensor it holds."""
        return Conditioning(*(_rows(t, index) for t in (self.context, self.pooled, self.y)))

    def zeros(self) -> "Conditioning":
        """The zero conditioning of the same shapes (SDXL's empty negative prompt, force_zeros_for_empty_prompt)."""
        return Conditioning(*(None if t is None else torch.zeros_like(t) for t in (self.context, self.pooled, self.y)))

    @staticmethod
    def cat(items: list) -> "Conditioning":
        """Rows of several conditionings, in order, as one."""
        first = items[0]
        return Conditioning(*(None if getattr(first, name) is None else torch.cat([getattr(c, name) for c in items])
                              for name in ("context", "pooled", "y")))


def _rows(t, index):
    """t[index], for a tensor the encoders may not give (the pooled vector: only a projecting encoder has one)."""
    return None if t is None else t[index]


def size_numbers(geometry: torch.Tensor, target: tuple) -> torch.Tensor:
    """SDXL's six size numbers per row (B, 6): from `geometry` (B, 4), each image's original (height, width) and
    crop (top, left), and the target (height, width) every row is drawn or trained at."""
    return torch.cat([geometry.float(), torch.tensor([list(target)] * len(geometry), dtype=torch.float32)], dim=1)


def uncropped(height: int, width: int) -> torch.Tensor:
    """The geometry (1, 4) of an image drawn at its own size: original = target, no crop (diffusers' default)."""
    return torch.tensor([[height, width, 0, 0]], dtype=torch.float32)


def with_sizes(cond: Conditioning, sizes: torch.Tensor) -> Conditioning:
    """`cond` with SDXL's added conditioning y: its pooled vectors (B, P) and the six size numbers (B, 6)
    embedded (unet.added_conditioning). The one place that builds y, for sampling, training and validation."""
    return replace(cond, y=added_conditioning(cond.pooled, sizes.to(cond.pooled.device)))


def encode_pooled(text_encoder, batch: list, device):
    """Several Tokens -> (contexts (B, 77, width), pooled vectors (B, P) or None if the encoder has none)."""
    ids = torch.tensor([tokens.ids for tokens in batch], device=device)
    embeds = text_encoder.embed_tokens(ids)  # (B, 77, width)
    if any(tokens.vectors for tokens in batch):
        embeds = embeds.clone()
        for row, tokens in enumerate(batch):
            for pos, vecs in tokens.vectors:
                embeds[row, pos:pos + len(vecs)] = vecs.to(embeds)
    return text_encoder.encode(ids, token_embeds=embeds)


# --- long prompts --------------------------------------------------------------------------------

def tokenize(tokenizer, text: str, learned: dict) -> list:
    """Pack a prompt of any length into 77-token windows (a list of Tokens, at least one).

    Greedy: plain tokens fill a window up to 75; a learned token's vectors are never split across two
    windows, so when they do not fit, the window closes early (padded) and they open the next one. A prompt
    of up to 75 tokens is one window, exactly diffusers' framing.
    """
    room = tokenizer.max_length - 2
    windows, body, vectors, names = [], [], [], []

    def close():
        nonlocal body, vectors, names
        windows.append(Tokens(tokenizer.frame(body), vectors, names))
        body, vectors, names = [], [], []

    for i, piece in enumerate(split_learned(text, learned)):
        if i % 2 == 0:  # plain text
            for token_id in tokenizer.encode(piece):
                if len(body) == room:
                    close()
                body.append(token_id)
        else:
            vecs = learned[piece]
            if len(vecs) > room:
                raise UserError(f"learned token {piece} has {len(vecs)} vectors; at most {room} fit in one "
                                f"{tokenizer.max_length}-token window")
            if len(body) + len(vecs) > room:
                close()
            vectors.append((1 + len(body), vecs))
            names.append(piece)
            body += [tokenizer.pad_id] * len(vecs)  # placeholders, overwritten by the vectors
    close()
    return windows


def encode_prompt(encoders: list, text: str, learned: dict, device) -> Conditioning:
    """A prompt of any length -> its Conditioning. `encoders`: [(tokenizer, text encoder)], one pair on
    SD 1/2, two on SDXL, whose contexts are concatenated along the width. A learned token's vectors are
    [n, sum of the encoders' widths] (SDXL: 768 + 1280), each encoder's own part spliced into it. The pooled
    vector is the last encoder's, of the first window (as AUTOMATIC1111 does for long prompts)."""
    contexts, pooled = [], None
    for (tokenizer, text_encoder), own in zip(encoders, _per_encoder(encoders, learned)):
        context, pooled = encode_pooled(text_encoder, tokenize(tokenizer, text, own), device)
        contexts.append(context.flatten(0, 1)[None])  # (1, 77 * windows, width_k)
    return Conditioning(torch.cat(contexts, dim=-1), _rows(pooled, slice(0, 1)))


def encode_first_windows(encoders: list, texts: list, learned: dict, device) -> Conditioning:
    """Training: each prompt in one window (first_window) -> Conditioning with context (B, 77, C) and, on
    SDXL, pooled (B, P); one batched call per encoder. Gradients flow to the learned vectors."""
    contexts, pooled = [], None
    for (tokenizer, text_encoder), own in zip(encoders, _per_encoder(encoders, learned)):
        context, pooled = encode_pooled(text_encoder, [first_window(tokenizer, t, own) for t in texts], device)
        contexts.append(context)
    return Conditioning(torch.cat(contexts, dim=-1), pooled)


def _per_encoder(encoders: list, learned: dict) -> list:
    """{token: [n, sum of widths]} -> one {token: [n, width_k]} per encoder (SDXL: columns 0:768, 768:2048)."""
    widths = [text_encoder.cfg.width for _, text_encoder in encoders]
    for name, vecs in learned.items():
        if vecs.shape[-1] != sum(widths):
            raise UserError(f"learned token {name}: its vectors are {vecs.shape[-1]} wide; this model's text "
                            f"encoders take {' + '.join(map(str, widths))}")
    parts, start = [], 0
    for width in widths:
        parts.append({name: vecs[:, start:start + width] for name, vecs in learned.items()})
        start += width
    return parts
