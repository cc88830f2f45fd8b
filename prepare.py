"""Medical scans -> 8-bit PNGs that train.py --data reads.

    python prepare.py chexpert-dicom/ chexpert-png/
    python prepare.py picai/images/ picai-png/ --recipe picai --masks labels/lesions --fallback-masks labels/glands

Reads 2-D DICOM (one PNG per frame), DICOM series, .mha/.mhd/.nrrd/.nii/.nii.gz (axial slices in the
radiological convention) and writes OUT/<case>.png (or OUT/<case>_<slice>.png) plus OUT/metadata.csv.
Needs the optional readers: pip install -r requirements-medical.txt
"""
import argparse
import csv
import io
import sys
from collections import Counter
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from mini_ldm import cli
from mini_ldm.errors import UserError
from mini_ldm.io import atomic_write, write_text_atomic
from readers.cases import find_cases, find_masks
from readers.intensity import METHODS, parse_normalization
from readers.slices import CaseSkipped, Options, Slice, prepare_case
from readers.volumes import SLICE_MODES

# The paper's convert_to_2d.py settings. The one deliberate difference: ADC and HBV are resampled onto the
# T2W grid through physical space instead of being cropped on their own grids (which misaligns them
# whenever the scans' origins differ).
RECIPES = {"picai": dict(sequences="t2w,adc,hbv", spacing="3,0.5,0.5", crop="30,300,300", normalize="minmax",
                         slice="largest", fallback_slice="median", split_by_mask=True, size=512)}
DEFAULTS = dict(sequences=None, spacing=None, crop=None, normalize=None, slice="middle", fallback_slice="median",
                split_by_mask=False, size=None)
COLUMNS = ["file_name", "case", "slice", "sources", "spacing", "normalize"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Turn DICOM files, DICOM series and volumes into 8-bit PNGs (grayscale "
                                "for one sequence, RGB for three) plus OUT/metadata.csv, ready for train.py --data OUT.")
    p.add_argument("src", type=Path, metavar="SRC", help="folder (searched recursively) or file with the scans")
    p.add_argument("out", type=Path, metavar="OUT", help="output folder for the PNGs and metadata.csv")
    p.add_argument("--sequences", help="comma-separated sequence suffixes, e.g. t2w,adc,hbv: a case is the files "
                   "<case>_t2w.mha, <case>_adc.mha, ... anywhere under SRC, stacked as channels in this order (one: "
                   "grayscale, three: RGB); the others are resampled onto the first one's grid")
    p.add_argument("--spacing", metavar="Z,Y,X", help="resample the first sequence to this spacing in mm first "
                   "(linear; default: keep it)")
    p.add_argument("--crop", metavar="D,H,W", help="centre crop or zero-pad the grid to this size in voxels")
    p.add_argument("--normalize", help=f"{METHODS}: per sequence, over its whole volume, to 0-255 (default: a "
                   "DICOM's own VOI LUT or window, else minmax; zscore maps mean +- 3 std)")
    p.add_argument("--slice", choices=SLICE_MODES, help="axial slices to write: middle (default), all, largest (the "
                   "slice with the most --masks voxels) or median (the median slice holding the mask)")
    p.add_argument("--masks", type=Path, metavar="DIR", help="mask volumes named <case>.nii.gz (any volume suffix), "
                   "resampled onto the case's grid with nearest neighbour")
    p.add_argument("--fallback-masks", type=Path, metavar="DIR", help="masks for cases whose --masks mask is missing "
                   "or empty (the paper: lesion masks, else gland masks)")
    p.add_argument("--fallback-slice", choices=SLICE_MODES, help="slice choice with a fallback mask (default: median; "
                   "middle needs no fallback mask)")
    p.add_argument("--split-by-mask", action="store_true", default=None, help="write cases whose --masks mask has "
                   "voxels to OUT/pos/ and the others to OUT/neg/")
    p.add_argument("--size", type=int, metavar="PX", help="resize to PX x PX with Lanczos (non-square slices are "
                   "zero-padded to square first; default: keep the size)")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="picai: the paper's settings (t2w,adc,hbv; spacing "
                   "3,0.5,0.5; crop 30,300,300; minmax; largest lesion slice, else median gland slice; pos/neg "
                   "split; 512 px), with ADC/HBV resampled onto the T2W grid; give --masks and --fallback-masks")
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **RECIPES.get(args.recipe, {})}.items():
        if getattr(args, key) is None:  # flags given explicitly win over the recipe
            setattr(args, key, value)
    return args


def numbers(text: str | None, flag: str, kind):
    """'3,0.5,0.5' -> (3.0, 0.5, 0.5): three positive numbers, or a one-line error naming the flag."""
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v > 0 for v in values):
        example = "3,0.5,0.5" if kind is float else "30,300,300"
        raise UserError(f"{flag} {text}: give three positive {kind.__name__}s as Z,Y,X, e.g. {example}")
    return values


def options(args) -> tuple[Options, list[str] | None]:
    sequences = [s.strip() for s in args.sequences.split(",")] if args.sequences else None
    if sequences is not None and (len(sequences) not in (1, 3) or not all(sequences)
                                  or len(set(sequences)) != len(sequences)):
        raise UserError(f"--sequences {args.sequences}: give one sequence (grayscale) or three different ones (RGB)")
    if args.size is not None and args.size < 1:
        raise UserError(f"--size {args.size}: must be a positive number of pixels, e.g. 512")
    if args.recipe and args.masks is None:
        raise UserError(f"--recipe {args.recipe} needs --masks LESION_DIR (and --fallback-masks GLAND_DIR for the "
                        "cases without a lesion)")
    needs_mask = args.slice in ("largest", "median") or args.split_by_mask
    if needs_mask and args.masks is None:
        what = f"--slice {args.slice}" if args.slice in ("largest", "median") else "--split-by-mask"
        raise UserError(f"{what} needs --masks DIR (mask volumes named <case>.nii.gz)")
    if args.fallback_masks is not None and args.masks is None:
        raise UserError("--fallback-masks is for cases without a --masks mask: give --masks DIR too")
    opts = Options(spacing=numbers(args.spacing, "--spacing", float), crop=numbers(args.crop, "--crop", int),
                   normalize=parse_normalization(args.normalize) if args.normalize else None, slice=args.slice,
                   masks=find_masks(args.masks, "--masks"),
                   fallback_masks=find_masks(args.fallback_masks, "--fallback-masks"),
                   fallback_slice=args.fallback_slice, split_by_mask=args.split_by_mask)
    return opts, sequences


class Report:
    """Counts for the summary line; skip lines are written above the progress bar."""

    def __init__(self):
        self.cases = self.images = 0
        self.skipped = Counter()

    def skip(self, case: str, message: str, why: str) -> None:
        tqdm.write(f"skipping {case}: {message}", file=sys.stderr)
        self.skipped[why] += 1

    def skipped_text(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        return f"skipped {sum(self.skipped.values())} cases ({reasons})"

    def summary(self, out: Path) -> str:
        line = f"wrote {self.images} images of {self.cases} cases to {out}"
        return f"{line}; {self.skipped_text()}" if self.skipped else line


def to_png(pixels, size: int | None) -> Image.Image:
    image = Image.fromarray(pixels)  # (H, W) -> L, (H, W, 3) -> RGB
    if size is None or image.size == (size, size):
        return image
    if image.width != image.height:  # keep the anatomy's proportions: pad to square (black), then resize
        side = max(image.size)
        square = Image.new(image.mode, (side, side))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = square
    return image.resize((size, size), Image.LANCZOS)


def write_case(case, slices: list[Slice], out: Path, size: int | None) -> list[dict]:
    rows = []
    for s in slices:
        name = case.id if len(slices) == 1 else f"{case.id}_{s.index:03d}"
        file_name = f"{s.subfolder}/{name}.png" if s.subfolder else f"{name}.png"
        with atomic_write(out / file_name) as f:
            to_png(s.pixels, size).save(f, format="PNG")
        rows.append(dict(file_name=file_name, case=case.id, slice="" if s.index is None else s.index,
                         sources=";".join(src.label for src in case.sources), spacing=s.spacing,
                         normalize=s.normalize))
    return rows


def main(argv=None):
    args = parse_args(argv)
    opts, sequences = options(args)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"OUT {args.out} is a file; give a folder for the PNGs")
    report = Report()
    cases = find_cases(args.src, sequences, report.skip, warn=lambda m: tqdm.write(m, file=sys.stderr),
                       out=args.out)
    rows = []
    for case in tqdm(cases, desc="preparing", unit="case", disable=None):
        try:
            slices = prepare_case(case, opts)
        except CaseSkipped as e:
            report.skip(case.id, str(e), e.why)
            continue
        rows += write_case(case, slices, args.out, args.size)
        report.cases, report.images = report.cases + 1, report.images + len(slices)
    if not rows:
        raise UserError(f"no case written: {report.skipped_text()}; see the lines above")
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(args.out / "metadata.csv", text.getvalue())
    print(report.summary(args.out))


if __name__ == "__main__":
    cli.run(main)
