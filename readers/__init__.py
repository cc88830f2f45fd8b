"""Images in: image folders for train.py, evaluate.py and classify.py; DICOM series and volumes for prepare.py.

  images.py     a folder of images (PNG/JPEG/16-bit TIFF, 2-D DICOM) -> plain 8-bit RGB, in a stable order
  extras.py     SimpleITK and pydicom, imported only when such a file is met (requirements-medical.txt)
  intensity.py  stored values -> 0..255: min-max, percentiles, a DICOM window, z-score
  dicom.py      a 2-D DICOM file -> display pixels (modality LUT, VOI LUT or window, MONOCHROME1 inverted)
  volumes.py    volumes: LPS reorientation, resampling through physical space, crop/pad, slice picking
  cases.py      which files make a case (one volume, or one file per sequence) and which mask is its
  slices.py     one case -> its 8-bit slices, as prepare.py writes them
  phantom.py    a synthetic phantom volume and lesion mask for prepare.py --demo
  chest_findings.py  labelled chest-radiograph phantoms (effusion, cardiomegaly, nodule) with captions
  findings.py   analytic detectors that measure those findings back from pixels

Imports only mini_ldm.errors and mini_ldm.io from the rest of the project.
"""
