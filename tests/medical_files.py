"""Medical test files made at test time: DICOM (pydicom) and volumes (SimpleITK). Nothing is committed."""
from pathlib import Path

import numpy as np

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_dicom(path, stored, photometric="MONOCHROME2", slope=None, intercept=None, window=None,
                syntax=None, series_uid=None, position=None, orientation=(1, 0, 0, 0, 1, 0), spacing=(1.0, 1.0)):
    """A little-endian DICOM file of `stored` ((H, W) or (F, H, W) uint16 values). With `position` it is one
    slice of an MR series (`series_uid`); `syntax` overrides the transfer syntax (pixels stay raw)."""
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
