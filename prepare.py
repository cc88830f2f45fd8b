"""Medical scans -> 8-bit PNGs that train.py --data reads.

    python prepare.py chexpert-dicom/ chexpert-png/
    python prepare.py picai/images/ picai-png/ --recipe picai --masks labels/lesions --fallback-masks labels/glands
    python prepare.py --demo        # a phantom volume and its mask, made on the spot, prepared into demo-output/

Reads 2-D DICOM (one PNG per frame), DICOM series, .mha/.mhd/.nrrd/.nii/.nii.gz (axial slices in the
radiological convention) and writes OUT/<case>.png (or OUT/<case>_<slice>.png) plus OUT/metadata.csv.
Needs the optional readers: pip install -r requirements-medical.txt
"""
import argparse
import csv
import io
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from mini_ldm import cli
from mini_ldm.demo import DEMO_DIR  # every CLI's --demo writes there
from mini_ldm.errors import UserError
from mini_ldm.io import write_image_atomic, write_text_atomic
from mini_ldm.settings import add_flags, from_flags, option
from readers.cases import find_cases, find_masks
from readers.extras import INSTALL_HINT
from readers.images import LISTING
from readers.intensity import METHODS, parse_normalization
from readers.slices import CaseSkipped, Options, Slice, prepare_case
from readers.volumes import DEFAULT_MAX_VOXELS, MEMORY_HINT, SLICE_MODES

# The paper's convert_to_2d.py settings. The one deliberate difference: ADC and HBV are resampled onto the
# T2W grid through physical space instead of being cropped on their own grids (which misaligns them
# whenever the scans' origins differ).
RECIPES = {"picai": dict(sequences="t2w,adc,hbv", spacing="3,0.5,0.5", crop="30,300,300", normalize="minmax",
                         slice="largest", fallback_slice="median", split_by_mask=True, size=512)}
DEFAULTS = dict(slice="middle", fallback_slice="median")  # where neither the flag nor the recipe says
COLUMNS = ["file_name", "case", "slice", "sources", "spacing", "normalize"]


@dataclass
class PrepareSettings:
    """prepare.py's options (SRC and OUT are its two positional arguments)."""
    sequences: str | None = option(None, "e.g. t2w,adc,hbv: a case is the files (or DICOM series folders) <case>_t2w.mha, "
                                         "<case>_adc.mha, ... anywhere under SRC, stacked as channels in this "
                                         "order (one: grayscale, three: RGB); the others are resampled onto the "
                                         "first one's grid", metavar="SEQ[,SEQ,SEQ]",
                                   shown="none: each file or series is a case")
    spacing: str | None = option(None, "resample the first sequence to this spacing in mm first (linear)",
                                 metavar="Z,Y,X", shown="keep it")
    crop: str | None = option(None, "centre crop or zero-pad the grid to this many voxels", metavar="D,H,W",
                              shown="keep it")
    normalize: str | None = option(None, f"{METHODS}: per sequence, over its whole volume, to 0-255 (zscore "
                                         "maps mean +- 3 std)", metavar="METHOD",
                                   shown="a DICOM's own VOI LUT or window, else minmax")
    slice: str | None = option(None, "axial slices to write: middle, all, largest (the slice with the most "
                                     "--masks voxels, the first on ties) or median (the median slice holding "
                                     "the mask)", choices=SLICE_MODES, shown=DEFAULTS["slice"])
    masks: Path | None = option(None, "mask volumes named <case>.nii.gz (any volume suffix), searched "
                                      "recursively, resampled onto the case's grid with nearest neighbour; any "
                                      "label > 0 counts", metavar="DIR")
    fallback_masks: Path | None = option(None, "masks for the cases whose --masks mask is missing or empty on "
                                               "the grid (the paper: lesion masks, else gland masks)",
                                         metavar="DIR")
    fallback_slice: str | None = option(None, "the slice choice with a fallback mask (middle needs no fallback "
                                              "mask)", choices=SLICE_MODES, shown=DEFAULTS["fallback_slice"])
    split_by_mask: bool = option(False, "write cases whose --masks mask has any voxel to OUT/pos/, the others "
                                        "to OUT/neg/")
    size: int | None = option(None, "resize to PX x PX with Lanczos; a non-square slice is zero-padded to "
                                    "square first", metavar="PX", shown="keep the size")
    recipe: str | None = option(None, "picai: the paper's settings at once (t2w,adc,hbv; spacing 3,0.5,0.5; "
                                      "crop 30,300,300; minmax; largest lesion slice, else median gland slice; "
                                      "pos/neg split; 512 px); give --masks and --fallback-masks; flags given "
                                      "explicitly win", choices=tuple(sorted(RECIPES)))
    max_voxels: int = option(DEFAULT_MAX_VOXELS, "skip a volume whose header says it holds more voxels than "
                                                 "this (read before its data, so a small .nii.gz that inflates "
                                                 "to gigabytes is refused at once)", metavar="N",
                                 shown="268435456 (2^28: 1 GiB as float32)")
    uneven_slices: bool = option(False, "prepare a DICOM series whose slice gaps vary by more than a tenth by "
                                        "resampling it from the slices' true positions (default: skip it "
                                        "with one line)")
    demo: bool = option(False, f"make a phantom volume and its mask in {DEMO_DIR}/ and prepare them into "
                               f"{DEMO_DIR}/prepared/ (SRC and OUT not needed)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Turn DICOM files, DICOM series and volumes into 8-bit PNGs "
                                "(grayscale for one sequence, RGB for three) plus OUT/metadata.csv, ready for "
                                f"train.py --data OUT. Needs the medical readers: {INSTALL_HINT}")
    p.add_argument("src", type=Path, metavar="SRC", nargs="?",
                   help="folder (searched recursively) or file with the scans")
    p.add_argument("out", type=Path, metavar="OUT", nargs="?", help="output folder for the PNGs and metadata.csv")
    add_flags(p, PrepareSettings)
    args = cli.parse_args(p, argv)
    if args.demo:
        args = demo_args(args)
    elif args.src is None or args.out is None:
        p.error("give SRC and OUT (or --demo)")
    for key, value in {**DEFAULTS, **RECIPES.get(args.recipe, {})}.items():
        if getattr(args, key) is None or getattr(args, key) is False:  # flags given explicitly win over the recipe
            setattr(args, key, value)
    return args


def demo_args(args):
    """--demo: SRC and OUT in demo-output/, with a phantom volume and its lesion mask made there."""
    from readers.phantom import write_phantom_case

    src, masks = write_phantom_case(DEMO_DIR / "phantom-volumes")
    args.src, args.out = args.src or src, args.out or DEMO_DIR / "prepared"
    args.masks = args.masks or masks
    args.slice = args.slice or "largest"
    print(f"demo: a phantom volume and its mask in {src}, prepared into {args.out}", file=sys.stderr)
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


def check_settings(s: PrepareSettings) -> list[str] | None:
    """Refuse contradictory flags before any file is read; returns the --sequences list."""
    sequences = [q.strip() for q in s.sequences.split(",")] if s.sequences else None
    if sequences is not None and (len(sequences) not in (1, 3) or not all(sequences)
                                  or len(set(sequences)) != len(sequences)):
        raise UserError(f"--sequences {s.sequences}: give one sequence (grayscale) or three different ones (RGB)")
    if s.size is not None and s.size < 1:
        raise UserError(f"--size {s.size}: must be a positive number of pixels, e.g. 512")
    if s.max_voxels < 1:
        raise UserError(f"--max-voxels {s.max_voxels}: must be a positive number of voxels, e.g. {DEFAULT_MAX_VOXELS}")
    if s.recipe and s.masks is None:
        raise UserError(f"--recipe {s.recipe} needs --masks LESION_DIR (and --fallback-masks GLAND_DIR for the "
                        "cases without a lesion)")
    if (s.slice in ("largest", "median") or s.split_by_mask) and s.masks is None:
        what = f"--slice {s.slice}" if s.slice in ("largest", "median") else "--split-by-mask"
        raise UserError(f"{what} needs --masks DIR (mask volumes named <case>.nii.gz)")
    if s.fallback_masks is not None and s.masks is None:
        raise UserError("--fallback-masks is for cases without a --masks mask: give --masks DIR too")
    return sequences


def options(s: PrepareSettings) -> Options:
    return Options(spacing=numbers(s.spacing, "--spacing", float), crop=numbers(s.crop, "--crop", int),
                   normalize=parse_normalization(s.normalize) if s.normalize else None, slice=s.slice,
                   masks=find_masks(s.masks, "--masks"), fallback_masks=find_masks(s.fallback_masks, "--fallback-masks"),
                   fallback_slice=s.fallback_slice, split_by_mask=s.split_by_mask, max_voxels=s.max_voxels,
                   uneven_slices=s.uneven_slices, warn=note)


def note(message: str) -> None:
    """One line above the progress bar, on stderr."""
    tqdm.write(message, file=sys.stderr)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class Report:
    """Counts for the summary line; skip lines are written above the progress bar."""

    def __init__(self):
        self.cases = self.images = 0
        self.skipped = Counter()

    def skip(self, case: str, message: str, why: str) -> None:
        note(f"skipping {case}: {message}")
        self.skipped[why] += 1

    def skipped_text(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        return f"skipped {plural(sum(self.skipped.values()), 'case')} ({reasons})"

    def summary(self, out: Path) -> str:
        line = f"wrote {plural(self.images, 'image')} of {plural(self.cases, 'case')} to {out}"
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
        write_image_atomic(out / file_name, to_png(s.pixels, size))
        rows.append(dict(file_name=file_name, case=case.id, slice="" if s.index is None else s.index,
                         sources=";".join(src.label for src in case.sources), spacing=s.spacing,
                         normalize=s.normalize))
    return rows


def write_metadata(out: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / LISTING, text.getvalue())


def main(argv=None):
    args = parse_args(argv)
    settings = from_flags(PrepareSettings, args)
    sequences = check_settings(settings)
    opts = options(settings)
    cli.check_writable(args.out, "OUT", is_file=False)  # a file, a path under a file, a read-only folder
    report = Report()
    cases = find_cases(args.src, sequences, report.skip, warn=note, out=args.out)
    rows = []
    # the bar goes to stderr even when that is not a terminal (a log file, a pipe), as train.py's does
    for case in tqdm(cases, desc="preparing", unit="case", file=sys.stderr):
        try:
            slices = prepare_case(case, opts)
        except CaseSkipped as e:
            report.skip(case.id, str(e), e.why)
            continue
        rows += write_case(case, slices, args.out, settings.size)
        report.cases, report.images = report.cases + 1, report.images + len(slices)
    if not rows:
        raise UserError(f"no case written: {report.skipped_text()}; see the lines above")
    write_metadata(args.out, rows)
    print(report.summary(args.out))


if __name__ == "__main__":
    cli.run(main, memory_hint=MEMORY_HINT)
