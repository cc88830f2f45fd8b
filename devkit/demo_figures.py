"""The pictures of README's demo section and docs/textual-inversion.md's demo part, drawn from what the README's
demo block leaves in demo-output/ (the two tokens of `train.py --demo --concepts`, its phantoms, the images of
`sample.py --demo --prompts-file`), with the committed phantom model:

    python -m devkit.demo_figures demo-output          # writes docs/demo-*.png (seconds, after the demo block)

Each picture is what a sample.py command draws (the commands are listed in docs/textual-inversion.md); here they
run in one process so the figures cost seconds. Every image is also scored by the phantom detectors
(readers/findings.py) and the counts are printed and returned: tests/test_demo_pipeline.py runs this script on
the demo block's output and checks that the pictures show what their captions say.
"""
import argparse
from pathlib import Path

from PIL import Image, ImageDraw

import mini_ldm
from mini_ldm import SampleSettings
from mini_ldm.demo import DEMO_MODEL
from mini_ldm.embeddings import read_embedding
from readers.findings import measure

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [1, 2, 3, 4]
STRENGTHS = (0.4, 0.6, 0.8)
ALPHAS = (0, 0.25, 0.5, 0.75, 1)
COMPOSED = "<effusion> AND chest radiograph, enlarged heart"
LABEL_WIDTH = 230  # pixels of text left of each row


def grid(rows: list, title: str, label_width: int = LABEL_WIDTH) -> Image.Image:
    """rows: [(label, [PIL images])] -> one picture under `title`, each row's label (one or more lines) centred
    on its left."""
    side = rows[0][1][0].size[0]
    out = Image.new("L", (label_width + side * max(len(r[1]) for r in rows), 20 + side * len(rows)), "white")
    pen = ImageDraw.Draw(out)
    pen.text((4, 4), title, fill="black")
    for i, (label, images) in enumerate(rows):
        pen.text((4, 20 + i * side + side // 2 - 6 * (label.count("\n") + 1)), label, fill="black")
        for j, image in enumerate(images):
            out.paste(image.convert("L"), (label_width + j * side, 20 + i * side))
    return out


def left_base_mask(path: Path, side: int = 128) -> Path:
    """White (repaint) over the lower half of the image's right side: the patient's left lung base."""
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).rectangle((side // 2 + 4, side // 2, side - 8, side - 12), fill=255)
    mask.save(path)
    return path


def count(images: list, finding: str) -> int:
    return sum(getattr(measure(image), finding) for image in images)


def tokens_and_edits(sd, out: Path, demo_output: Path, learned: dict) -> dict:
    """docs/demo-tokens.png (the two learned tokens) and docs/demo-edits.png (img2img, inpainting, interpolation,
    composition); returns the detectors' counts."""
    text = SampleSettings(prompt="", steps=20, cfg=3.0, scheduler="dpm++2m")
    drawn = {token: sd.sample_seeds(SampleSettings(**{**vars(text), "prompt": token}), SEEDS, learned=learned)[0]
             for token in ("<no-finding>", "<effusion>")}
    grid([(f"{t}  ({count(images, 'effusion_left')}/{len(images)} left effusion)", images)
          for t, images in drawn.items()],
         "the two tokens of train.py --demo --concepts, seeds 1-4 (patient's left = image right)"
         ).save(out / "demo-tokens.png")

    healthy_path = demo_output / "concepts-data" / "no-finding" / "chest-000.png"
    healthy = Image.open(healthy_path).convert("L")
    mask_path = left_base_mask(demo_output / "left-base-mask.png")
    edit = {"prompt": "<effusion>", "steps": 20, "cfg": 3.0, "scheduler": "dpm++2m", "seed": 1}
    img2img = [sd.sample(settings=SampleSettings(**edit, init_image=healthy_path, strength=s), learned=learned,
                         progress=False)[0][0] for s in STRENGTHS]
    inpainted = [sd.sample(settings=SampleSettings(**{**edit, "seed": seed}, init_image=healthy_path,
                                                   mask=mask_path), learned=learned, progress=False)[0][0]
                 for seed in SEEDS[:3]]
    strip = sd.interpolate("<no-finding>", "<effusion>", ALPHAS, progress=False,
                           settings=SampleSettings(**{**edit, "prompt": ""}))[0]
    composed = sd.sample_seeds(SampleSettings(**{**vars(text), "prompt": COMPOSED}), SEEDS, learned=learned)[0]
    rows = [(f"img2img <effusion>,\nstrength {', '.join(map(str, STRENGTHS))}", [healthy, *img2img]),
            ("inpainting <effusion> in\nthe white box, seeds 1-3", [healthy, Image.open(mask_path), *inpainted]),
            (f"interpolation <no-finding>\nto <effusion>, alpha {ALPHAS[0]}-{ALPHAS[-1]}", strip),
            (f"{COMPOSED.replace(' AND', chr(10) + 'AND')}", composed)]
    grid(rows, "editing a no-finding phantom (first column) with the learned <effusion>; composing it"
         ).save(out / "demo-edits.png")
    return {"no-finding": count(drawn["<no-finding>"], "effusion_left"),
            "effusion": count(drawn["<effusion>"], "effusion_left"),
            "img2img": count(img2img, "effusion_left"), "inpainted": count(inpainted, "effusion_left"),
            "inpainted_right": count(inpainted, "effusion_right"),
            "strip_ends": (count(strip[:1], "effusion_left"), count(strip[-1:], "effusion_left")),
            "composed_effusion": count(composed, "effusion_left"), "composed_heart": count(composed, "cardiomegaly")}


def synthetic_figure(out: Path, demo_output: Path) -> None:
    """docs/demo-synthetic.png: the first images of each class of the demo's synthetic set."""
    rows = [(f"synthetic/{name}/ ({token})", [Image.open(p) for p in sorted((demo_output / "synthetic" / name)
                                                                            .glob("*.png"))[:6]])
            for name, token in (("neg", "<no-finding>"), ("pos", "<effusion>"))]
    grid(rows, "sample.py --demo --prompts-file: the classes classify.py --demo adds").save(out / "demo-synthetic.png")


def make_figures(demo_output: Path, out: Path) -> dict:
    sd = mini_ldm.load(DEMO_MODEL, device="cpu", dtype="fp32")
    concepts = Path(demo_output) / "concepts"
    learned = {e.token: e.vectors for e in map(read_embedding, sorted(concepts.glob("*.safetensors")))}
    for token, vectors in learned.items():  # registered too: interpolate() reads the model's own tokens
        sd.add_learned_token(token, vectors)
    out.mkdir(parents=True, exist_ok=True)
    counts = tokens_and_edits(sd, out, Path(demo_output), learned)
    synthetic_figure(out, Path(demo_output))
    return counts


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("demo_output", type=Path, help="the demo-output/ folder the README's demo block wrote")
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the pictures (default: docs/)")
    args = p.parse_args()
    print(make_figures(args.demo_output, args.out))


if __name__ == "__main__":
    main()
