"""Medical test files made at test time: DICOM (pydicom) and volumes (SimpleITK). Nothing is committed."""
from pathlib import Path

import numpy as np

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_dicom(path, stored, photometric="MONOCHROME2", slope=None, intercept=None, window=None,
                syntax=None, series_uid=None, position=None, orientation=(1, 0, 0, 0, 1, 0), spacing=(1.0, 1.0),
                extra=None):
    """A little-endian DICOM file of `stored` ((H, W) or (F, H, W) uint16 values). With `position` it is one
    slice of an MR series (`series_uid`); `syntax` overrides the transfer syntax (pixels stay raw); `extra`:
    more attributes by keyword (EchoNumbers=2, ...), set last."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UID, generate_uid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = np.asarray(stored, dtype=np.uint16)
    sop_class = MR_IMAGE if position is not None else SECONDARY_CAPTURE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR" if position is not None else "CR"
    ds.StudyInstanceUID = ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID, ds.PatientName = "test", "Test^Patient"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(v) for v in spacing]
        ds.SliceThickness = 1.0
    ds.PixelData = stored.tobytes()
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    if syntax is not None:  # claims a compressed syntax it does not hold: nothing can decode it
        meta.TransferSyntaxUID = UID(syntax)
        ds.PixelData = pydicom.encaps.encapsulate([stored.tobytes()])
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_volume(path, array_zyx, spacing_xyz=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """A SimpleITK volume file; `array_zyx` in numpy order (z, y, x)."""
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.asarray(array_zyx))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in np.asarray(direction).reshape(-1)))
    sitk.WriteImage(image, str(path))
    return path


def ball(shape_zyx, spacing_xyz, origin, centre_xyz, radius_mm, value=1000.0, direction=None):
    """An array (z, y, x) that is `value` within `radius_mm` of the physical point `centre_xyz`, with a
    faint background, for a volume of this geometry (physical = origin + direction @ (index * spacing))."""
    d = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    z, y, x = np.indices(shape_zyx, dtype=float)
    index = np.stack([x, y, z], axis=-1) * np.asarray(spacing_xyz, float)  # (z, y, x, 3) in index*spacing
    physical = index @ d.T + np.asarray(origin, float)
    inside = np.linalg.norm(physical - np.asarray(centre_xyz, float), axis=-1) <= radius_mm
    return np.where(inside, value, 10.0).astype(np.float32)


def write_enhanced_dicom(path, stored, rescales, windows, shared_rescale=None):
    """An enhanced multi-frame file (F, H, W): each frame's rescale (slope, intercept) and window (centre,
    width) only in the Per-frame Functional Groups (None: left out there), `shared_rescale` in the Shared ones;
    nothing at the top level, as eCT_Supplemental.dcm keeps them."""
    from pydicom.dataset import Dataset

    path = write_dicom(path, stored)
    import pydicom

    ds = pydicom.dcmread(str(path))
    per_frame = []
    for rescale, window in zip(rescales, windows):
        item = Dataset()
        if rescale is not None:
            transform = Dataset()
            transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = rescale[0], rescale[1], "HU"
            item.PixelValueTransformationSequence = [transform]
        if window is not None:
            voi = Dataset()
            voi.WindowCenter, voi.WindowWidth = window
            item.FrameVOILUTSequence = [voi]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    shared = Dataset()
    if shared_rescale is not None:
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = (*shared_rescale, "HU")
        shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_palette_dicom(path, indices, lut_rgb16):
    """A PALETTE COLOR file: 8-bit indices (H, W) into a 16-bit palette `lut_rgb16` (N, 3)."""
    import pydicom

    path = write_dicom(path, np.zeros(np.shape(indices), np.uint16) + 1)
    ds = pydicom.dcmread(str(path))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.asarray(indices, np.uint8).tobytes()
    lut = np.asarray(lut_rgb16, np.uint16)
    for k, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [len(lut), 0, 16])
        ds[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"  # 'US or SS' until told
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut[:, k].tobytes())
    ds.save_as(str(path), enforce_file_format=True)
    return path


def nifti1_to_nifti2(src, dst):
    """The same volume as a NIfTI-2 file (540-byte header, 64-bit dims, double precision geometry), made from
    an uncompressed NIfTI-1 file field by field: SimpleITK reads the one, prepare.py must read the other alike."""
    import struct

    raw = Path(src).read_bytes()
    dims, (datatype, bitpix) = struct.unpack_from("<8h", raw, 40), struct.unpack_from("<hh", raw, 70)
    pixdim, (vox_offset,) = struct.unpack_from("<8f", raw, 76), struct.unpack_from("<f", raw, 108)
    scaling, codes = struct.unpack_from("<2f", raw, 112), struct.unpack_from("<2h", raw, 252)
    quatern, srow = struct.unpack_from("<6f", raw, 256), struct.unpack_from("<12f", raw, 280)
    h = bytearray(540)
    struct.pack_into("<i", h, 0, 540)
    h[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<hh", h, 12, datatype, bitpix)
    struct.pack_into("<8q", h, 16, *dims)
    struct.pack_into("<8d", h, 104, *pixdim)
    struct.pack_into("<q", h, 168, 544)  # vox_offset: header + 4 bytes of extension flags
    struct.pack_into("<2d", h, 176, *scaling)
    struct.pack_into("<2i", h, 344, *codes)
    struct.pack_into("<6d", h, 352, *quatern)
    struct.pack_into("<12d", h, 400, *srow)
    struct.pack_into("<i", h, 500, 2)  # xyzt_units: mm
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(bytes(h) + bytes(4) + raw[int(vox_offset):])
    return Path(dst)


def write_inflating_nifti(path, size_xyz):
    """A .nii.gz whose NIfTI-1 header claims `size_xyz` uint8 voxels while holding only a few: its header
    alone says how much memory reading it would take (a 'gzip bomb' would hold them all, as zeros)."""
    import gzip
    import struct

    small = write_volume(Path(path).with_name("small.nii"), np.zeros((2, 4, 4), np.uint8))
    header = bytearray(small.read_bytes())
    small.unlink()
    struct.pack_into("<8h", header, 40, 3, *size_xyz, 1, 1, 1, 1)
    Path(path).write_bytes(gzip.compress(bytes(header)))
    return Path(path)
