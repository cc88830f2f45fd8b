"""What prepare.py finds under SRC: cases made of volume files, DICOM series or 2-D DICOM files.

Without --sequences every volume file, DICOM series (the files of one SeriesInstanceUID in one folder)
and 2-D DICOM file is a case of its own. With --sequences t2w,adc,hbv a case is the files (or series
folders) named `<case>_t2w...`, `<case>_adc...`, ... anywhere under SRC, as PI-CAI ships them.
"""
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mini_ldm.errors import UserError

from .dicom import is_dicom, quiet_pydicom
from .images import IMAGE_EXTENSIONS
from .extras import require
from .volumes import VOLUME_SUFFIXES, strip_volume_suffix, volume_suffix

DATA_FILE_SUFFIXES = (".raw", ".zraw", ".img", ".gz")  # data files beside .mhd/.nhdr headers: not cases

Skip = Callable[[str, str, str], None]  # skip(case, message, why)


@dataclass
class Source:
    paths: list[Path]  # one file, or a DICOM series' files in slice order
    label: str  # its path relative to SRC, for messages and metadata.csv
    kind: str  # "volume", "series" or "dicom2d"
    positions: list[float] | None = None  # a series' slice positions along its normal (mm), ascending


@dataclass
class Case:
    id: str
    sources: list[Source]  # one per sequence, in --sequences order


def visible_files(root: Path, exclude: Path | None = None) -> list[Path]:
    """Files under root (or root itself), hidden ones and those under `exclude` (OUT, when it lies inside
    SRC) left out, in a stable order."""
    if root.is_file():
        return [root]
    files = (p for p in root.rglob("*") if p.is_file())
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if exclude is not None:
        exclude = exclude.resolve()
        files = [p for p in files if not p.resolve().is_relative_to(exclude)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def relative(path: Path, root: Path) -> str:
    return path.name if root.is_file() else path.relative_to(root).as_posix()


def find_cases(src: Path, sequences: list[str] | None, skip: Skip, warn: Callable[[str], None],
               out: Path | None = None) -> list[Case]:
    if not src.exists():
        raise UserError(f"SRC {src} does not exist; give the folder (or file) holding the scans")
    if sequences:
        return _cases_by_sequence(src, sequences, skip)
    cases, dicoms, others = [], [], []
    for path in visible_files(src, exclude=out):
        if volume_suffix(path):
            cases.append(Case(strip_volume_suffix(path), [Source([path], relative(path, src), "volume")]))
        elif is_dicom(path):
            dicoms.append(path)
        elif not path.name.lower().endswith(DATA_FILE_SUFFIXES):
            others.append(path)
    if not cases and not dicoms:  # nothing to prepare: one line for the folder, not one per file
        raise UserError(nothing_to_prepare(src, others))
    for path in others:
        warn(f"skipping {relative(path, src)}: not a DICOM file or a volume")
    for source in group_dicom(dicoms, src, warn):
        name = source.label if source.kind == "series" else source.label.rsplit(".", 1)[0]
        cases.append(Case(Path(name).name, [source]))
    _make_ids_unique(cases)
    if not cases:
        raise UserError(f"no DICOM files or volumes ({', '.join(VOLUME_SUFFIXES)}) found in {src}")
    return cases


def nothing_to_prepare(src: Path, others: list) -> str:
    """The one line for a SRC without DICOM files or volumes; a folder of plain images needs no prepare.py."""
    looked_for = f"no DICOM files or volumes ({', '.join(VOLUME_SUFFIXES)}) found in {src}"
    images = [p for p in others if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        return looked_for + (f" ({len(others)} other file{'s' * (len(others) != 1)} skipped)" if others else "")
    rest = f" and {len(others) - len(images)} other files" if len(others) > len(images) else ""
    return (f"{looked_for}: it holds {len(images)} plain image{'s' * (len(images) != 1)}{rest}, which need no "
            f"preparing; train on them with train.py --data {src} (prepare.py turns scans into PNGs)")


def group_dicom(paths: list[Path], root: Path, warn: Callable[[str], None] = lambda m: None) -> list[Source]:
    """Files of one SeriesInstanceUID in one folder, each with a slice position, make a series (a
    volume); every other DICOM file is a 2-D image (a radiograph, or a multi-frame file). Files that share
    a position (several echoes, b-values, or one image saved several times) are not stacked as slices:
    see `split_repeated_positions`."""
    if not paths:
        return []
    pydicom = require("pydicom", f"reading DICOM file {paths[0]}")
    groups, sources = defaultdict(list), []
    for path in paths:
        with quiet_pydicom(relative(path, root), notice=warn):
            try:
                ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
            except Exception:
                ds = None  # read_dicom says what is wrong with it, as a 2-D file
            position = _slice_position(ds)
            uid = None if position is None else str(ds.SeriesInstanceUID)
        if position is None:
            sources.append(Source([path], relative(path, root), "dicom2d"))
        else:
            groups[(path.parent, uid)].append(Slot(position, path, ds))
    for (folder, uid), members in sorted(groups.items()):
        label = relative(folder, root) if folder != root else root.name
        for suffix, part in split_repeated_positions(members, label, warn):
            sources.append(_series_or_image(part, label + suffix, root))
    return sources


@dataclass
class Slot:
    position: float  # along the slice normal, mm
    path: Path
    dataset: object  # its header


# what tells apart the images of one series that share slice positions, most specific first
SPLIT_BY = (("EchoNumbers", "echo"), ("DiffusionBValue", "b"), ("TemporalPositionIdentifier", "t"),
            ("AcquisitionNumber", "acq"))


def split_repeated_positions(members: list, label: str, warn) -> list[tuple[str, list]]:
    """[(label suffix, slots)]: the series whole when every position is held once; else one series per
    echo number (b-value, temporal position, acquisition) when that makes every position unique; else every
    file on its own, as a 2-D image. Either way a line says what was done."""
    def key(slot):
        return round(slot.position, 3)

    if len({key(m) for m in members}) == len(members):
        return [("", members)]
    for attribute, short in SPLIT_BY:
        parts = defaultdict(list)
        for m in members:
            parts[str(getattr(m.dataset, attribute, ""))].append(m)
        if len(parts) > 1 and all(len({key(m) for m in part}) == len(part) for part in parts.values()):
            warn(f"note: {label}: {len(members)} files at {len({key(m) for m in members})} slice positions; "
                 f"split into {len(parts)} series by {attribute} ({label}_{short}<value>)")
            return [(f"_{short}{value}", part) for value, part in sorted(parts.items())]
    warn(f"note: {label}: {len(members)} files share slice positions and nothing tells them apart (the same "
         "image saved several times?); each file is prepared as a 2-D image, not stacked as a volume")
    return [("", [m]) for m in members]


def _series_or_image(members: list, label: str, root: Path) -> Source:
    if len(members) == 1:
        return Source([members[0].path], relative(members[0].path, root), "dicom2d")
    members = sorted(members, key=lambda m: m.position)  # along the slice normal, as the volume's z axis
    return Source([m.path for m in members], label, "series", [m.position for m in members])


def _slice_position(ds) -> float | None:
    """Where a single-frame slice sits along its normal, or None for files that are no series' slice."""
    try:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1 or "SeriesInstanceUID" not in ds:
            return None
        row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        return float(np.dot(np.cross(row, col), np.array(ds.ImagePositionPatient, float)))
    except (AttributeError, TypeError, ValueError, IndexError, KeyError):
        return None


def _cases_by_sequence(src: Path, sequences: list[str], skip: Skip) -> list[Case]:
    found = defaultdict(lambda: defaultdict(list))  # case -> sequence -> sources
    candidates = [p for p in visible_files(src) if volume_suffix(p)]
    if src.is_dir():
        candidates += sorted(p for p in src.rglob("*") if p.is_dir() and not p.name.startswith("."))
    for path in candidates:
        name = strip_volume_suffix(path)
        for seq in sequences:
            if name.lower().endswith("_" + seq.lower()) and len(name) > len(seq) + 1:
                source = _series_folder(path, src) if path.is_dir() else Source([path], relative(path, src), "volume")
                if source is not None:
                    found[name[: -len(seq) - 1]][seq].append(source)
    if not found:
        names = ", ".join(f"<case>_{s}" for s in sequences)
        raise UserError(f"no files named {names} (with a volume suffix such as .mha or .nii.gz) or such DICOM "
                        f"series folders found in {src}; check --sequences")
    cases = []
    for case_id in sorted(found):
        by_seq = found[case_id]
        missing = [s for s in sequences if not by_seq.get(s)]
        doubled = [s for s in sequences if len(by_seq.get(s, [])) > 1]
        if missing:
            have = ", ".join(src_.label for s in sequences for src_ in by_seq.get(s, []))
            skip(case_id, f"no {'/'.join(missing)} file (found {have})", "missing sequence")
        elif doubled:
            files = ", ".join(x.label for x in by_seq[doubled[0]])
            skip(case_id, f"several {doubled[0]} files ({files}); keep one", "ambiguous files")
        else:
            cases.append(Case(case_id, [by_seq[s][0] for s in sequences]))
    return cases


def _series_folder(folder: Path, root: Path) -> Source | None:
    """A folder named <case>_<sequence> that holds one DICOM series."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_dicom(p))
    series = [s for s in group_dicom(files, root) if s.kind == "series"]
    if len(series) != 1:
        return None
    return Source(series[0].paths, relative(folder, root), "series", series[0].positions)


def _make_ids_unique(cases: list[Case]) -> None:
    """File names are the ids: where two cases share one (CheXpert's many view1_frontal.dcm), use the
    path below SRC instead, with '_' for '/'."""
    count = defaultdict(int)
    for case in cases:
        count[case.id] += 1
    for case in cases:
        if count[case.id] > 1:
            label = case.sources[0].label
            stem = label if case.sources[0].kind == "series" else label[: -len(Path(label).name)] + case.id
            case.id = stem.replace("/", "_")


def find_masks(folder: Path | None, flag: str) -> dict[str, Path]:
    """Mask files under `folder` by case id (the file name without its volume suffix)."""
    if folder is None:
        return {}
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: not a folder; give the folder of mask volumes named <case>.nii.gz")
    masks = {strip_volume_suffix(p): p for p in visible_files(folder) if volume_suffix(p)}
    if not masks:
        raise UserError(f"{flag} {folder}: no mask files ({', '.join(VOLUME_SUFFIXES)}) in it; "
                        "give the folder of masks named <case>.nii.gz")
    return masks
