"""2-D DICOM as train.py --data reads it: modality LUT, window, MONOCHROME1, frames, undecodable files,
3-D volumes refused with a pointer to prepare.py. Every file is made here with pydicom/SimpleITK."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("SimpleITK")

from medical_files import write_dicom, write_enhanced_dicom, write_palette_dicom, write_volume  # noqa: E402
from readers.images import DataError, find_images, load_frames, load_image
from ti.data import load_dataset  # noqa: E402
from readers.dicom import DicomError, display_frames, read_dicom  # noqa: E402
from readers.extras import MissingExtraError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
SLOPE, INTERCEPT, CENTRE, WIDTH = 0.5, -1024.0, 300.0, 1200.0
JPEG_LS = "1.2.840.10008.1.2.4.80"


def stored_ramp(h=24, w=40):
    """16-bit stored values that span the window and beyond on both sides."""
    return np.linspace(0, 5000, h * w).reshape(h, w).astype(np.uint16)


def expected_display(stored, monochrome1):
    """The DICOM chain by hand: modality LUT, the standard's linear window, MONOCHROME1 inverted."""
    x = SLOPE * stored.astype(np.float64) + INTERCEPT
    y = np.clip((x - (CENTRE - 0.5)) / (WIDTH - 1) + 0.5, 0, 1)
    return np.rint(255 * ((1 - y) if monochrome1 else y)).astype(np.uint8)


def test_monochrome1_window_and_rescale_give_the_expected_8bit_image(tmp_path):
    stored = stored_ramp()
    path = write_dicom(tmp_path / "cr.dcm", stored, "MONOCHROME1", SLOPE, INTERCEPT, (CENTRE, WIDTH))
    frames, used = display_frames(read_dicom(path))
    assert used == "window:300,1200" and len(frames) == 1
    np.testing.assert_array_equal(frames[0], expected_display(stored, monochrome1=True))
    rgb = np.asarray(load_image(path))  # what train.py reads: the same, on three channels
    assert rgb.shape == (24, 40, 3)
    np.testing.assert_array_equal(rgb[..., 1], frames[0])
    assert frames[0][0, 0] == 255 and frames[0][-1, -1] == 0  # low values white in MONOCHROME1


def test_monochrome2_twin_is_the_inverse(tmp_path):
    stored = stored_ramp()
    one = write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", SLOPE, INTERCEPT, (CENTRE, WIDTH))
    two = write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2", SLOPE, INTERCEPT, (CENTRE, WIDTH))
    a, b = (display_frames(read_dicom(p))[0][0].astype(int) for p in (one, two))
    np.testing.assert_array_equal(b, expected_display(stored, monochrome1=False))
    assert np.abs(a + b - 255).max() <= 1  # inverse up to rounding a .5 the other way


def test_multiframe_gives_one_image_per_frame_and_preamble_files_are_found(tmp_path):
    frames = np.stack([stored_ramp() // (i + 1) for i in range(3)])
    write_dicom(tmp_path / "cine.dcm", frames)
    write_dicom(tmp_path / "sub" / "IM0001", stored_ramp())  # no extension: found by its DICM preamble
    (tmp_path / "notes.txt").write_text("not an image")
    warns = []
    paths = find_images(tmp_path, warns.append)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["cine.dcm", "sub/IM0001"]
    assert warns == ["skipping notes.txt: not an image"]
    images = load_frames(tmp_path / "cine.dcm")
    assert len(images) == 3 and all(im.mode == "RGB" and im.size == (40, 24) for im in images)
    items = load_dataset(tmp_path, 16, warn=warns.append)
    assert len(items) == 4 and [it.path.name for it in items] == ["cine.dcm"] * 3 + ["IM0001"]


def test_undecodable_transfer_syntax_is_skipped_with_one_line(tmp_path):
    write_dicom(tmp_path / "ok.dcm", stored_ramp())
    write_dicom(tmp_path / "jpegls.dcm", stored_ramp(), syntax=JPEG_LS)
    warns = []
    items = load_dataset(tmp_path, 16, warn=warns.append)
    assert [it.path.name for it in items] == ["ok.dcm"]
    assert len(warns) == 1 and "\n" not in warns[0], warns
    assert "jpegls.dcm" in warns[0] and "JPEG-LS Lossless" in warns[0] and JPEG_LS in warns[0]


def test_missing_pydicom_is_one_line_naming_the_package(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "cr.dcm", stored_ramp())
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` fail
    with pytest.raises(MissingExtraError, match=r"pydicom.*pip install -r requirements-medical.txt"):
        load_dataset(tmp_path, 16, warn=lambda m: None)
    with pytest.raises(MissingExtraError, match="cr.dcm"):
        load_image(path)


def test_a_volume_in_the_data_folder_points_to_prepare(tmp_path):
    write_dicom(tmp_path / "cr.dcm", stored_ramp())
    write_volume(tmp_path / "scan.nii.gz", np.zeros((4, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"scan.nii.gz is a 3-D volume.*prepare.py"):
        find_images(tmp_path)


def train(*args):
    return subprocess.run([sys.executable, str(REPO / "train.py"), "--device", "cpu", *map(str, args)], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300)


def test_train_cli_reads_a_dicom_folder_and_refuses_a_volume(sd1_single, tmp_path):
    data = tmp_path / "xray"
    for i in range(2):
        write_dicom(data / f"p{i}.dcm", stored_ramp(40, 40) // (i + 1), "MONOCHROME1", SLOPE, INTERCEPT,
                    (CENTRE, WIDTH))
    out = tmp_path / "emb" / "xray.safetensors"
    r = train("--data", data, "--model", sd1_single, "--vectors", 1, "--steps", 1, "--resolution", 32,
              "--save-every", 0, "--output", out)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert out.is_file()

    volume = write_volume(tmp_path / "vol" / "t2w.mha", np.zeros((4, 8, 8), np.float32))
    r = train("--data", volume.parent, "--model", sd1_single, "--steps", 1)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "t2w.mha is a 3-D volume" in lines[0] and "prepare.py" in lines[0]


def window_by_hand(stored, slope, intercept, centre, width):
    x = slope * stored.astype(np.float64) + intercept
    return np.rint(255 * np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0, 1)).astype(np.uint8)


def test_enhanced_multiframe_reads_rescale_and_window_per_frame_from_the_functional_groups(tmp_path):
    """eCT_Supplemental-like: nothing at the top level; frame 0 has its own rescale and window, frame 1 its own
    window and the shared rescale. Min-max (the old fallback) would give other pixels."""
    stored = np.stack([stored_ramp(), stored_ramp()[::-1]])
    path = write_enhanced_dicom(tmp_path / "ect.dcm", stored, rescales=[(1.0, -1024.0), None],
                                windows=[(40.0, 400.0), (300.0, 1500.0)], shared_rescale=(0.5, -100.0))
    frames, used = display_frames(read_dicom(path))
    np.testing.assert_array_equal(frames[0], window_by_hand(stored[0], 1.0, -1024.0, 40.0, 400.0))
    np.testing.assert_array_equal(frames[1], window_by_hand(stored[1], 0.5, -100.0, 300.0, 1500.0))
    assert used == "window:per-frame"


def test_palette_colour_is_looked_up(tmp_path):
    indices = np.arange(24 * 40).reshape(24, 40) % 4
    lut = np.array([[0, 0, 0], [65535, 0, 0], [0, 65535, 0], [0, 0, 32768]])
    path = write_palette_dicom(tmp_path / "pal.dcm", indices, lut)
    frames, used = display_frames(read_dicom(path))
    expected = np.rint(lut[indices] / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(frames[0], expected)
    assert used == "stored" and frames[0].shape == (24, 40, 3)


def test_an_all_zero_image_is_refused_as_blank(tmp_path):
    path = write_dicom(tmp_path / "blank.dcm", np.zeros((16, 16), np.uint16))
    with pytest.raises(DicomError, match="blank") as caught:
        read_dicom(path)
    assert caught.value.why == "blank" and "blank.dcm" in str(caught.value)
