"""The pictures of docs/phantom-model.md and docs/textual-inversion.md, drawn from the committed phantom model.

    python -m devkit.phantom_figures            # writes docs/phantom-*.png and docs/ti-*.png, ~2 minutes on a CPU

Every picture comes from fixed seeds, so a rerun draws the same pictures (up to the CPU's floating point).
The Textual Inversion run is train.py itself, as a user runs it; the nearest vocabulary tokens of its learned
vectors are printed (cosine similarity in the frozen token table) for the walkthrough.
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import mini_ldm
from devkit.demo_figures import grid
from mini_ldm import SampleSettings
from mini_ldm.demo import DEMO_MODEL
from mini_ldm.embeddings import read_embedding
from readers.chest_findings import chest_cases
from ti.phantoms import write_chest_phantoms

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "<effusion>"
TI = {"vectors": 4, "steps": 150, "lr": 0.05, "batch": 4, "save-every": 30}
SEEDS = list(range(6))
LABEL_WIDTH = 200  # pixels of text left of each row (one-line labels)


def draw(sd, prompt: str, cfg: float = 3.0, learned: dict | None = None) -> list:
    settings = SampleSettings(prompt=prompt, steps=20, cfg=cfg, scheduler="dpm++2m")
    return sd.sample_seeds(settings, SEEDS, learned=learned or {})[0]


def training_figure() -> Image.Image:
    """The first 8 training phantoms of the committed model, each with its caption's findings under it."""
    cases = chest_cases(seed=2026, count=8)
    side, band = cases[0][0].size[0], 34
    out = Image.new("L", (side * len(cases), 20 + side + band), "white")
    pen = ImageDraw.Draw(out)
    pen.text((4, 4), "training phantoms and their captions (the patient's left is on the image's right)", fill="black")
    for j, (image, truth) in enumerate(cases):
        out.paste(image.convert("L"), (j * side, 20))
        words = truth.caption.removeprefix("chest radiograph, ").split(", ")
        pen.text((j * side + 3, 22 + side), "\n".join(words), fill="black")
    return out


def prompts_figure(sd) -> Image.Image:
    prompts = ["chest radiograph, no finding", "chest radiograph, left pleural effusion",
               "chest radiograph, right pleural effusion", "chest radiograph, enlarged heart",
               "chest radiograph, lung nodule", "(empty prompt, no guidance)"]
    rows = [(p, draw(sd, "", cfg=1.0) if p.startswith("(") else draw(sd, p)) for p in prompts]
    return grid(rows, "the phantom model, seeds 0-5, DPM++ 2M 20 steps, CFG 3", LABEL_WIDTH)


def learn(folder: Path) -> Path:
    data = write_chest_phantoms(folder / "effusion", 100, seed=5, effusion="left")
    out = folder / "effusion.safetensors"
    cmd = [sys.executable, "train.py", "--model", str(DEMO_MODEL), "--device", "cpu", "--data", str(data), "--token",
           TOKEN, "--init", "dog", "--output", str(out)] + [str(a) for k, v in TI.items() for a in (f"--{k}", v)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return out


def ti_figures(sd, out: Path) -> tuple[Image.Image, Image.Image]:
    """(samples at saved steps, samples at several CFG scales)."""
    steps = list(range(TI["save-every"], TI["steps"], TI["save-every"]))
    saved = [(f"step {s}", out.with_name(f"{out.stem}-{s}.safetensors")) for s in steps]
    rows = [("'dog' (the init word alone)", draw(sd, "dog"))]
    rows += [(f"{TOKEN} after {label}", draw(sd, TOKEN, learned={TOKEN: read_embedding(path).vectors}))
             for label, path in saved + [(f"step {TI['steps']}", out)]]
    vectors = read_embedding(out).vectors
    cfgs = [(f"{TOKEN}, CFG {c}", draw(sd, TOKEN, cfg=c, learned={TOKEN: vectors})) for c in (1.0, 2.0, 3.0, 5.0)]
    return (grid(rows, f"Textual Inversion of a left pleural effusion: 100 phantoms, {TI['vectors']} vectors",
                 LABEL_WIDTH),
            grid(cfgs, "classifier-free guidance scale, the learned token", LABEL_WIDTH))


def nearest_tokens(sd, vectors: torch.Tensor, k: int = 5) -> list:
    table = sd.text_encoder.embeddings.token_embedding.weight.float()
    sims = torch.nn.functional.normalize(vectors, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T
    return [[(sd.tokenizer.id_to_token(int(i)), round(float(s), 2)) for s, i in zip(*row.topk(k))] for row in sims]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the pictures")
    args = p.parse_args()
    sd = mini_ldm.load(DEMO_MODEL, device="cpu", dtype="fp32")
    args.out.mkdir(parents=True, exist_ok=True)
    training_figure().save(args.out / "phantom-training.png")
    prompts_figure(sd).save(args.out / "phantom-prompts.png")
    with tempfile.TemporaryDirectory() as tmp:
        out = learn(Path(tmp))
        by_step, by_cfg = ti_figures(sd, out)
        by_step.save(args.out / "ti-steps.png")
        by_cfg.save(args.out / "ti-cfg.png")
        init = torch.stack([sd.text_encoder.embeddings.token_embedding.weight[sd.tokenizer.encode("dog")[0]]])
        print("nearest tokens of 'dog' itself:", nearest_tokens(sd, init.float())[0])
        learned = read_embedding(out).vectors
        moved = torch.nn.functional.cosine_similarity(learned, init.float())
        for i, row in enumerate(nearest_tokens(sd, learned)):
            print(f"vector {i}: norm {learned[i].norm():.2f} (dog: {init.float().norm():.2f}), cosine to dog "
                  f"{moved[i]:.2f}; nearest {row}")


if __name__ == "__main__":
    main()
