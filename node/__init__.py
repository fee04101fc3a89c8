"""dicomnode: a PACS-integrated DICOM inference node for cardiac MR left-ventricle volumes."""

__version__ = "0.1.0"
