"""The optional medical readers (SimpleITK, pydicom): imported only when a medical file is met.

PNG/JPEG users keep the six runtime dependencies; whoever brings DICOM or volumes gets one line
saying which package is missing and how to install the extra.
"""
import importlib

from mini_ldm.errors import UserError

INSTALL_HINT = "pip install -r requirements-medical.txt"


class MissingExtraError(UserError):
    """A medical file was met but the optional package that reads it is not installed."""


def require(module: str, what: str):
    """Import `module` (e.g. "pydicom") or raise MissingExtraError naming it and the install command.
    `what` says what needed it, e.g. "reading DICOM file scan.dcm"."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{what} needs the {module} package, which is not installed: "
                                f"{INSTALL_HINT}") from None
