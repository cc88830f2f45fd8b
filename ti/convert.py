"""Convert a Textual Inversion embedding to our .safetensors format or to an AUTOMATIC1111 .pt file.

    python -m ti.convert chexpert_pneumonia.pt chexpert_pneumonia.safetensors
    python -m ti.convert effusion.safetensors effusion.pt                 # A1111, chosen by the .pt ending
    python -m ti.convert learned_embeds.bin effusion.safetensors --token "<effusion>"
    python -m ti.convert kohya_sdxl.safetensors effusion.safetensors --token "<effusion>"   # SDXL: clip_l + clip_g
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mini_ldm import cli
from mini_ldm.embeddings import EmbeddingError, read_embedding, write_embedding

SUFFIX = {"ours": ".safetensors", "a1111": ".pt"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ti.convert",
        description=__doc__.split("\n\n")[0]
        + " The input may be ours, diffusers (.safetensors/.bin), A1111 (.pt), kohya (emb_params) or a bare"
        " tensor; it is recognised by its content. Pickled files are opened with weights_only loading only.",
        epilog="examples:\n" + __doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="IN", help="embedding file to read")
    p.add_argument("output", metavar="OUT", help="file to write (.safetensors for ours, .pt for a1111); replaced atomically")
    p.add_argument(
        "--format",
        choices=sorted(SUFFIX),
        help="output format: 'ours' is one tensor keyed by the token plus metadata, and loads in diffusers "
        "as is; 'a1111' is the AUTOMATIC1111 web UI's .pt. Default: a1111 if OUT ends in .pt, else ours",
    )
    p.add_argument(
        "--token",
        metavar="NAME",
        help="prompt word to store, e.g. '<effusion>'. Default: the input's token (for A1111, kohya and bare-tensor "
        "inputs, the input file name). Note that the A1111 web UI prompts with the file name, whatever is stored",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out = Path(args.output)
    fmt = args.format or ("a1111" if out.suffix.lower() == ".pt" else "ours")
    # a mismatched ending would make the file unreadable to tools that go by extension (A1111, diffusers)
    if out.suffix.lower() != SUFFIX[fmt]:
        raise EmbeddingError(f"{out}: the {fmt} format is a {SUFFIX[fmt]} file; name OUT accordingly")
    emb = read_embedding(args.input)
    if args.token is not None:
        emb = dataclasses.replace(emb, token=args.token)
    write_embedding(out, emb, format=fmt)
    shape = emb.shape_text() if emb.widths else f"{emb.num_vectors} x {emb.width}"
    print(f"wrote {out} ({fmt}): token {emb.token!r}, {shape}")


if __name__ == "__main__":
    cli.run(main)
