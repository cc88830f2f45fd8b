"""prepare.py as a user runs it (subprocess, exit status, PNGs, metadata.csv, error lines) on volumes and
DICOM made here with SimpleITK and pydicom: channel alignment through physical space, slice choice from
masks, the pos/neg split, orientation, and one-line errors for bad input."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pydicom")
pytest.importorskip("SimpleITK")

from medical_files import ball, nifti1_to_nifti2, write_dicom, write_inflating_nifti, write_volume  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}  # the progress bar: its own test
BALL_CENTRE = (5.0, -3.0, 0.0)  # mm, physical (x, y, z)


def prepare(*args, env=None):
    return subprocess.run([sys.executable, str(REPO / "prepare.py"), *map(str, args)], cwd=REPO, env=env or ENV,
                          capture_output=True, text=True, timeout=120)


def prepare_together(runs: dict, env=None) -> dict:
    """Several independent prepare.py runs started at once (each is mostly interpreter start-up), by name."""
    procs = {name: subprocess.Popen([sys.executable, str(REPO / "prepare.py"), *map(str, args)], cwd=REPO,
                                    env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in runs.items()}
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return results


def ok(r):
    assert r.returncode == 0 and "Traceback" not in r.stderr, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def one_error_line(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert lines and lines[-1].startswith("error: "), r.stderr
    for word in words:
        assert word in r.stderr, (word, r.stderr)
    return lines


def metadata(out):
    with open(out / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def png(path):
    return np.asarray(Image.open(path))


def test_three_sequences_on_different_grids_line_up(tmp_path):
    """A bright ball at one physical point, stored on three grids (other spacings, origins, a flipped
    direction): after prepare.py its centre is at the same pixel in R, G and B."""
    src = tmp_path / "src" / "p1"
    t2w = dict(spacing_xyz=(0.5, 0.5, 3.0), origin=(-16, -16, -30))
    adc = dict(spacing_xyz=(0.8, 0.8, 3.5), origin=(-14, -18, -25))
    flip = np.diag([-1.0, 1.0, -1.0])
    hbv = dict(spacing_xyz=(1.0, 1.1, 3.2), origin=(20, -20, 30), direction=flip)
    for name, shape, geo in [("t2w", (20, 64, 64), t2w), ("adc", (16, 40, 40), adc), ("hbv", (18, 32, 32), hbv)]:
        values = ball(shape, geo["spacing_xyz"], geo["origin"], BALL_CENTRE, 4, direction=geo.get("direction"))
        write_volume(src / f"p1_1_{name}.mha", values, **geo)
    out = tmp_path / "out"
    r = ok(prepare(tmp_path / "src", out, "--sequences", "t2w,adc,hbv"))
    assert "wrote 1 image of 1 case" in r.stdout
    rows = metadata(out)
    assert list(rows[0]) == ["file_name", "case", "slice", "sources", "spacing", "normalize"]
    assert rows == [dict(file_name="p1_1.png", case="p1_1", slice="10", spacing="3,0.5,0.5",
                         sources="p1/p1_1_t2w.mha;p1/p1_1_adc.mha;p1/p1_1_hbv.mha", normalize="minmax;minmax;minmax")]
    rgb = png(out / "p1_1.png").astype(float)
    assert rgb.shape == (64, 64, 3)
    expected = ((-3 + 16) / 0.5, (5 + 16) / 0.5)  # (row, col) of the ball on the T2W grid
    for c in range(3):
        rows_, cols = np.nonzero(rgb[..., c] > 128)
        assert len(rows_) > 50, c
        assert abs(rows_.mean() - expected[0]) <= 1 and abs(cols.mean() - expected[1]) <= 1, (c, rows_.mean(), cols.mean())


def slice_volume(tmp_path, name, depth=20):
    """A volume whose slice z is the constant 10 * z (so a PNG tells which slice it is), with x varying a little."""
    values = np.repeat(np.arange(depth, dtype=np.float32)[:, None, None] * 10, 16, 1).repeat(16, 2)
    write_volume(tmp_path / "src" / f"{name}.mha", values)
    return lambda z: round(10 * z * 255 / (10 * (depth - 1)))


def mask_volume(path, slices_counts, depth=20):
    mask = np.zeros((depth, 16, 16), np.uint8)
    for z, n in slices_counts.items():
        mask[z].flat[:n] = 1
    return write_volume(path, mask)


def test_largest_median_fallback_and_split(tmp_path):
    value_of = slice_volume(tmp_path, "lesion")
    slice_volume(tmp_path, "healthy")
    slice_volume(tmp_path, "nomask")
    mask_volume(tmp_path / "lesions" / "lesion.nii.gz", {4: 50, 5: 20, 6: 10, 11: 1})  # largest 4, median 5
    mask_volume(tmp_path / "lesions" / "healthy.nii.gz", {})  # empty: not a cancer case
    mask_volume(tmp_path / "glands" / "healthy.nii.gz", {z: 30 for z in range(9, 16)})  # median 12
    mask_volume(tmp_path / "glands" / "lesion.nii.gz", {z: 30 for z in range(1, 4)})
    src, out = tmp_path / "src", tmp_path / "out"
    runs = {mode: [src, out / mode, "--slice", mode, "--masks", tmp_path / "lesions", "--normalize", "minmax"]
            for mode in ("largest", "median")}
    runs["split"] = [src, out / "split", "--slice", "largest", "--masks", tmp_path / "lesions", "--fallback-masks",
                     tmp_path / "glands", "--split-by-mask"]
    results = prepare_together(runs)
    for mode, z in [("largest", 4), ("median", 5)]:
        ok(results[mode])
        rows = {r["case"]: r for r in metadata(out / mode)}
        assert rows["lesion"]["slice"] == str(z) and "healthy" not in rows and "nomask" not in rows
        assert (png(out / mode / "lesion.png") == value_of(z)).all()
    r = ok(results["split"])
    rows = {r["case"]: r for r in metadata(out / "split")}
    assert rows["lesion"]["file_name"] == "pos/lesion.png" and rows["lesion"]["slice"] == "4"
    assert rows["healthy"]["file_name"] == "neg/healthy.png" and rows["healthy"]["slice"] == "12"
    assert (png(out / "split" / "neg" / "healthy.png") == value_of(12)).all()
    assert "nomask" not in rows and "skipping nomask: --slice largest needs a mask" in r.stderr
    assert "wrote 2 images of 2 cases" in r.stdout and "skipped 1 case (1 no mask)" in r.stdout


def test_flipped_and_permuted_storage_gives_the_same_png(tmp_path):
    """The same physical volume stored as is, with x and z reversed (direction diag(-1, 1, -1)), and with x
    and y swapped: each axial PNG shows the patient's right on the left and anterior at the top."""
    rng = np.random.default_rng(0)
    arr = rng.random((9, 12, 14)).astype(np.float32)  # (z, y, x), identity direction = LPS
    spacing, origin = np.array([0.7, 0.9, 2.5]), np.array([-5.0, 3.0, 10.0])
    write_volume(tmp_path / "src" / "a" / "plain.mha", arr, spacing, origin)
    far = origin + (np.array([14, 12, 9]) - 1) * spacing * np.array([1, 0, 1])  # the last voxel in x and z
    write_volume(tmp_path / "src" / "b" / "flipped.nii.gz", arr[::-1, :, ::-1], spacing, far, np.diag([-1, 1, -1]))
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])  # index x runs along physical y, index y along x
    write_volume(tmp_path / "src" / "c" / "swapped.nrrd", arr.transpose(0, 2, 1), spacing[[1, 0, 2]], origin, swap)
    out = tmp_path / "out"
    ok(prepare(tmp_path / "src", out))
    plain = png(out / "plain.png")
    assert plain.shape == (12, 14)
    np.testing.assert_array_equal(png(out / "flipped.png"), plain)
    np.testing.assert_array_equal(png(out / "swapped.png"), plain)
    expected = np.rint((arr[4] - arr.min()) / (arr.max() - arr.min()) * 255)  # middle slice, min-max of the volume
    np.testing.assert_array_equal(plain, expected)


def test_dicom_2d_and_series_with_their_windows(tmp_path):
    stored = np.linspace(0, 4000, 30 * 40).reshape(30, 40).astype(np.uint16)
    write_dicom(tmp_path / "src" / "cxr" / "view1_frontal.dcm", stored, "MONOCHROME1", 1.0, 0.0, (2000, 2001))
    uid = "1.2.826.0.1.3680043.8.498.1"
    for k in range(5):  # a series of 5 slices, 2 mm apart, written out of order
        write_dicom(tmp_path / "src" / "mr" / f"s{(k * 3) % 5}.dcm", stored // (k + 1), window=(500, 1001),
                    series_uid=uid, position=(0, 0, 2.0 * k), spacing=(0.5, 0.5))
    out = tmp_path / "out"
    ok(prepare(tmp_path / "src", out, "--size", 64))
    rows = {r["case"]: r for r in metadata(out)}
    assert rows["view1_frontal"]["slice"] == "" and rows["view1_frontal"]["spacing"] == ""
    assert rows["view1_frontal"]["normalize"] == "window:2000,2001"
    xray = png(out / "view1_frontal.png")
    # 40 x 30 padded to 40 x 40 (black bands above and below), then 64 x 64; MONOCHROME1: low values white
    assert xray.shape == (64, 64) and xray[10, 32] > 200 and xray[54, 32] < 50 and xray[2, 32] == 0
    assert rows["mr"]["slice"] == "2" and rows["mr"]["spacing"] == "2,0.5,0.5" and rows["mr"]["normalize"] == "window:500,1001"
    expected = np.rint(np.clip(((stored // 3).astype(float) - 499.5) / 1000 + 0.5, 0, 1) * 255)
    mr = Image.open(out / "mr.png")
    assert mr.size == (64, 64)
    ok(prepare(tmp_path / "src" / "mr", out / "plain"))  # no --size: the slice as it is
    np.testing.assert_array_equal(png(out / "plain" / "mr.png"), expected)


BLOCK_IMPORT = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, _Block())
"""


def test_bad_input_is_one_line(tmp_path):
    good = ball((20, 32, 32), (1, 1, 3), (0, 0, 0), (16, 16, 30), 5)
    write_volume(tmp_path / "ok" / "c1_t2w.mha", good)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "c9.mha").write_text("ObjectType = Image\nNDims = 3\nthis is not a volume\n")
    write_volume(tmp_path / "mixed" / "c2_t2w.mha", good)
    write_volume(tmp_path / "mixed" / "c2_adc.mha", good)  # no hbv
    for seq in ("t2w", "adc", "hbv"):
        write_volume(tmp_path / "mixed" / f"c3_{seq}.mha", good)
    (tmp_path / "nomasks").mkdir()
    ok_src = tmp_path / "ok"
    r = prepare_together({
        "unreadable": [tmp_path / "broken", tmp_path / "o1"],
        "mismatched": [tmp_path / "mixed", tmp_path / "o2", "--sequences", "t2w,adc,hbv"],
        "empty masks": [ok_src, tmp_path / "o3", "--slice", "largest", "--masks", tmp_path / "nomasks"],
        "spacing": [ok_src, tmp_path / "o4", "--spacing", "3,0.5"],
        "recipe": [ok_src, tmp_path / "o5", "--recipe", "picai"],
        "normalize": [ok_src, tmp_path / "o6", "--normalize", "window:40"]})
    lines = one_error_line(r["unreadable"], "no case written")
    assert len(lines) == 2 and lines[0].startswith("skipping c9: cannot read volume") and "c9.mha" in lines[0]
    ok(r["mismatched"])
    assert r["mismatched"].stderr.strip().splitlines() == ["skipping c2: no hbv file (found c2_t2w.mha, c2_adc.mha)"]
    assert "skipped 1 case (1 missing sequence)" in r["mismatched"].stdout
    for name, words in {"empty masks": ("--masks", "no mask files"), "spacing": ("--spacing 3,0.5",),
                        "recipe": ("--recipe picai needs --masks",), "normalize": ("--normalize window:40",)}.items():
        assert len(one_error_line(r[name], *words)) == 1, name


def test_missing_extra_is_one_line(tmp_path):
    """SimpleITK (volumes) or pydicom (DICOM) missing: one line naming the package and the install command."""
    write_volume(tmp_path / "vol" / "c1_t2w.mha", np.zeros((4, 8, 8), np.float32))
    write_dicom(tmp_path / "dcm" / "cr.dcm", np.zeros((8, 8), np.uint16))
    runs = {}
    for module, src in [("SimpleITK", "vol"), ("pydicom", "dcm")]:
        blocker = tmp_path / f"block-{module}"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(BLOCK_IMPORT.format(module=module))
        runs[module] = prepare_together({module: [tmp_path / src, tmp_path / "out"]},
                                        env={**ENV, "PYTHONPATH": str(blocker)})[module]
    for module, r in runs.items():
        lines = one_error_line(r, module, "pip install -r requirements-medical.txt")
        assert len(lines) == 1, r.stderr


def test_picai_recipe_end_to_end(tmp_path):
    """PI-CAI's layout (<patient>/<patient>_<study>_{t2w,adc,hbv}.mha, masks <patient>_<study>.nii.gz):
    512 px RGB PNGs, the cancer case in pos/ at its largest lesion slice, the healthy one in neg/."""
    geo = dict(spacing_xyz=(0.5, 0.5, 3.0), origin=(-60.0, -60.0, -45.0))
    shape = (31, 240, 240)  # 120 x 120 x 93 mm: cropped to 30 slices, padded to 300 x 300
    for case in ("10000_1000000", "10001_1000001"):
        for k, seq in enumerate(("t2w", "adc", "hbv")):
            values = ball(shape, geo["spacing_xyz"], geo["origin"], (0, 0, 6.0), 10 + k)
            write_volume(tmp_path / "images" / case[:5] / f"{case}_{seq}.mha", values, **geo)
    lesion = np.zeros(shape, np.uint8)
    lesion[17, 100:120, 100:120], lesion[18, 105:110, 105:110] = 1, 1  # on the 30-slice grid: 17 - 0 = 17
    write_volume(tmp_path / "lesions" / "10000_1000000.nii.gz", lesion, **geo)
    write_volume(tmp_path / "lesions" / "10001_1000001.nii.gz", np.zeros(shape, np.uint8), **geo)
    gland = np.zeros(shape, np.uint8)
    gland[10:15, 90:150, 90:150] = 1
    write_volume(tmp_path / "glands" / "10001_1000001.nii.gz", gland, **geo)
    out = tmp_path / "out"
    r = ok(prepare(tmp_path / "images", out, "--recipe", "picai", "--masks", tmp_path / "lesions",
                   "--fallback-masks", tmp_path / "glands"))
    rows = {r["case"]: r for r in metadata(out)}
    assert rows["10000_1000000"]["file_name"] == "pos/10000_1000000.png" and rows["10000_1000000"]["slice"] == "17"
    assert rows["10001_1000001"]["file_name"] == "neg/10001_1000001.png" and rows["10001_1000001"]["slice"] == "12"
    assert {r["spacing"] for r in rows.values()} == {"3,0.5,0.5"}
    image = Image.open(out / "pos" / "10000_1000000.png")
    assert image.mode == "RGB" and image.size == (512, 512) and "wrote 2 images of 2 cases" in r.stdout


def test_normalization_methods():
    from readers.intensity import parse_normalization, to_uint8, value_range

    values = np.arange(101, dtype=float)
    assert value_range(parse_normalization("minmax"), values) == (0, 100)
    assert value_range(parse_normalization("percentile:10,90"), values) == (10, 90)
    lo, hi = value_range(parse_normalization("zscore"), values)
    assert np.isclose((lo + hi) / 2, 50) and np.isclose(hi - lo, 6 * values.std())
    window = parse_normalization("window:40,400")
    assert str(window) == "window:40,400"
    dicom = np.clip((values * 5 - (40 - 0.5)) / 399 + 0.5, 0, 1)  # the standard's linear window
    np.testing.assert_array_equal(to_uint8(values * 5, *value_range(window, values)), np.rint(dicom * 255))
    assert to_uint8(np.array([np.nan, 5.0]), 0, 10).tolist() == [0, 128]  # outside the scan: black
    for bad in ("percentile:90,10", "window:40", "minmax:1", "gamma"):
        with pytest.raises(Exception, match="--normalize"):
            parse_normalization(bad)


# --------------------------------------------------------------------------- files a radiologist would expect read right

def series(folder, uid, positions, values, extra=None, prefix=""):
    """One MR slice file per position (0, 0, z), each slice a constant `values[k]` over a little ramp."""
    ramp = np.arange(8 * 8, dtype=np.uint16).reshape(8, 8)
    for k, (z, v) in enumerate(zip(positions, values)):
        write_dicom(folder / f"{prefix}s{k:02d}.dcm", ramp + np.uint16(v), series_uid=uid,
                    position=(0, 0, z), extra=extra[k] if extra else None)


def test_repeated_slice_positions_are_not_stacked_as_one_volume(tmp_path):
    """Two echoes of one series (3 positions each) become two series; three copies of one image (nothing
    tells them apart) become three 2-D images. Both with a note; never one 6- or 3-slice fake volume."""
    uid = "1.2.826.0.1.3680043.8.498.7"
    for echo in (1, 2):
        series(tmp_path / "src" / "echoes", uid, [0, 2, 4], [100 * echo] * 3,
               extra=[dict(EchoNumbers=echo)] * 3, prefix=f"e{echo}")
    series(tmp_path / "src" / "copies", "1.2.826.0.1.3680043.8.498.8", [5, 5, 5], [10, 20, 30])
    out = tmp_path / "out"
    r = ok(prepare(tmp_path / "src", out, "--slice", "all"))
    rows = metadata(out)
    by_case = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row["slice"])
    assert by_case == {"echoes_echo1": ["0", "1", "2"], "echoes_echo2": ["0", "1", "2"],
                       "s00": [""], "s01": [""], "s02": [""]}, by_case
    assert "echoes: 6 files at 3 slice positions; split into 2 series by EchoNumbers" in r.stderr and "each file is prepared as a 2-D image" in r.stderr


def test_uneven_slice_gaps_are_refused_or_resampled_from_true_positions(tmp_path):
    """Slices at z = 0, 2, 4, 10 mm with values 10 z: skipped by default (one line); with --uneven-slices an
    even 2 mm grid of 6 slices whose values are still 10 z (linear between the true neighbours)."""
    positions = [0.0, 2.0, 4.0, 10.0]
    series(tmp_path / "src" / "ct", "1.2.826.0.1.3680043.8.498.9", positions, [int(10 * z) for z in positions])
    r = prepare_together({"default": [tmp_path / "src", tmp_path / "o1", "--slice", "all"],
                          "resampled": [tmp_path / "src", tmp_path / "o2", "--slice", "all", "--uneven-slices",
                                        "--normalize", "window:50.5,101"]})
    one_error_line(r["default"], "slice gaps of ct vary from 2 to 6 mm", "--uneven-slices")
    ok(r["resampled"])
    assert "resampled from the slices' true positions" in r["resampled"].stderr
    rows = metadata(tmp_path / "o2")
    assert [row["slice"] for row in rows] == ["0", "1", "2", "3", "4", "5"] and rows[0]["spacing"] == "2,1,1"
    ramp = np.arange(64).reshape(8, 8)
    for k, row in enumerate(rows):  # window 50.5/101 maps value v to v exactly: 0..100 -> 0..255 scale
        values = ramp + 10 * (2 * k)
        expected = np.clip((values - 50) / 100 + 0.5, 0, 1) * 255  # (exact .5 values may round either way)
        np.testing.assert_allclose(png(tmp_path / "o2" / row["file_name"]), expected, atol=0.51, err_msg=row["file_name"])


def test_a_volume_too_large_is_refused_from_its_header(tmp_path):
    """A small .nii.gz whose header claims 2048 x 2048 x 512 voxels is refused before its data is read,
    naming the file and --max-voxels; a real small volume is refused under a low --max-voxels too."""
    write_inflating_nifti(tmp_path / "bomb" / "huge.nii.gz", (2048, 2048, 512))
    write_volume(tmp_path / "small" / "c1.mha", np.ones((4, 8, 8), np.float32))
    r = prepare_together({"bomb": [tmp_path / "bomb", tmp_path / "o1"],
                          "low cap": [tmp_path / "small", tmp_path / "o2", "--max-voxels", "100"]})
    lines = one_error_line(r["bomb"], "huge.nii.gz", "2,147,483,648 voxels", "--max-voxels")
    assert len(lines) == 2 and "skipped 1 case (1 too large)" in lines[-1]
    one_error_line(r["low cap"], "c1.mha", "256 voxels (8 x 8 x 4)", "--max-voxels 100")


def test_out_of_memory_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    """MemoryError, or SimpleITK's failed allocation, while reading a volume: one line naming the file and what
    to try, no traceback."""
    import SimpleITK as sitk

    import prepare
    from mini_ldm.errors import UserError

    write_volume(tmp_path / "src" / "c1.mha", np.ones((4, 8, 8), np.float32))
    for failure in (MemoryError(), RuntimeError("Exception thrown in SimpleITK ReadImage: ITK ERROR: "
                                                "Failed to allocate memory for image.")):
        def fail(*args, **kwargs):
            raise failure
        monkeypatch.setattr(sitk, "ReadImage", fail)
        with pytest.raises(UserError, match="no case written"):
            prepare.main([str(tmp_path / "src"), str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert "out of memory reading volume" in err and "c1.mha" in err and "--spacing" in err, err


def test_skip_counts_say_what_happened(tmp_path):
    """Two readable 4-D files and a damaged one: 'skipped 3 cases (2 not 3-D, 1 unreadable)', not 3 unreadable."""
    import SimpleITK as sitk

    (tmp_path / "src").mkdir()
    for k in range(2):
        image = sitk.JoinSeries([sitk.GetImageFromArray(np.ones((3, 4, 4), np.float32))] * 2)  # 4-D
        sitk.WriteImage(image, str(tmp_path / "src" / f"t{k}.nii.gz"))
    (tmp_path / "src" / "broken.mha").write_text("ObjectType = Image\nNDims = 3\nnot a volume\n")
    one_error_line(prepare(tmp_path / "src", tmp_path / "out"), "skipped 3 cases (2 not 3-D, 1 unreadable)")


def test_nifti2_reads_like_its_nifti1_twin(tmp_path):
    """A NIfTI-2 file (which SimpleITK cannot read) gives the PNGs its NIfTI-1 twin gives: values, scaling,
    and geometry (an oblique, flipped direction, so reorientation to LPS depends on reading it right)."""
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1]])
    values = ball((9, 20, 24), (0.8, 0.9, 2.5), (5, -7, 3), (12, 2, -8), 5, direction=direction)
    one = write_volume(tmp_path / "v1" / "case.nii", values.astype(np.int16), (0.8, 0.9, 2.5), (5, -7, 3), direction)
    nifti1_to_nifti2(one, tmp_path / "v2" / "case.nii")
    r = prepare_together({name: [tmp_path / name, tmp_path / f"o-{name}", "--slice", "all", "--spacing", "2,0.5,0.5"]
                          for name in ("v1", "v2")})
    rows = [metadata(tmp_path / f"o-{name}") for name in ("v1", "v2") if ok(r[name])]
    assert rows[0] == rows[1] and len(rows[0]) > 5
    assert max(png(tmp_path / "o-v2" / row["file_name"]).max() for row in rows[0]) == 255  # the ball is in view
    for row in rows[0]:
        np.testing.assert_array_equal(png(tmp_path / "o-v2" / row["file_name"]), png(tmp_path / "o-v1" / row["file_name"]))


def test_blank_dicom_is_skipped_and_pydicom_warnings_are_one_line_notes(tmp_path):
    write_dicom(tmp_path / "src" / "blank.dcm", np.zeros((8, 8), np.uint16))
    write_dicom(tmp_path / "src" / "ok.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8))
    uid = "1.2.abc"  # not a valid UID: pydicom warns when it is read (and here, when it is written)
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        series(tmp_path / "src" / "mr", uid, [0, 1, 2], [0, 5, 9])
    r = ok(prepare(tmp_path / "src", tmp_path / "out", env={**ENV, "PYTHONWARNINGS": "default"}))
    assert "skipping blank: every pixel of DICOM file" in r.stderr and "skipped 1 case (1 blank)" in r.stdout
    notes = [line for line in r.stderr.splitlines() if "Invalid value for VR UI" in line]
    assert len(notes) == 1 and notes[0].startswith("note: mr/s00.dcm: "), r.stderr
    assert "UserWarning" not in r.stderr and "warn_and_log" not in r.stderr, r.stderr


def test_help_progress_bar_and_demo(tmp_path):
    """--help names the extra to install and no vague metavar; the bar shows when stderr is not a terminal;
    --demo makes a phantom volume and mask in demo-output/ and writes its lesion's largest slice."""
    runs = prepare_together({"help": ["--help"], "demo": ["--demo"]}, env={**ENV, "TQDM_DISABLE": ""})
    help_text = ok(runs["help"]).stdout
    assert "pip install -r requirements-medical.txt" in help_text
    assert "NORMALIZE" not in help_text and "SEQUENCES" not in help_text and "--max-voxels N" in help_text
    r = subprocess.run([sys.executable, str(REPO / "prepare.py"), "--demo"], cwd=tmp_path, env={**ENV, "TQDM_DISABLE": ""},
                       capture_output=True, text=True, timeout=120)
    ok(r)
    assert "preparing: 100%" in r.stderr  # stderr is a pipe here, not a terminal
    rows = metadata(tmp_path / "demo-output" / "prepared")
    assert [(row["case"], row["slice"]) for row in rows] == [("phantom_001", "7")]
    assert (tmp_path / "demo-output" / "phantom-volumes" / "masks" / "phantom_001.nii.gz").is_file()
    assert png(tmp_path / "demo-output" / "prepared" / "phantom_001.png").max() == 255


def test_an_out_that_cannot_be_written_is_refused_before_any_case(tmp_path):
    """OUT a file, or under a file: one line naming OUT before any volume is read (under a file it used to
    fail after the first case, with the file system's words)."""
    import prepare
    from in_process import run_main

    write_volume(tmp_path / "src" / "c1.mha", np.ones((4, 8, 8), np.float32))
    (tmp_path / "plain-file").write_text("keep me")
    for out in (tmp_path / "plain-file", tmp_path / "plain-file" / "out"):
        r = run_main(prepare.main, tmp_path / "src", out)
        assert len(one_error_line(r, "OUT", "plain-file", "is a file")) == 1, r.stderr
    assert (tmp_path / "plain-file").read_text() == "keep me"


def test_a_folder_of_plain_images_is_one_line_not_one_per_file(tmp_path):
    """Issue 24 A.10: prepare.py on PNGs (which need no preparing) says so once, pointing to train.py --data,
    instead of a "skipping" line per file and a bare "no DICOM files" error."""
    import prepare
    from in_process import run_main

    for i in range(5):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / f"xray-{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    r = run_main(prepare.main, tmp_path, tmp_path.parent / "out")
    lines = one_error_line(r, "5 plain images", "1 other file", f"train.py --data {tmp_path}")
    assert len(lines) == 1 and "skipping" not in r.stderr, r.stderr
