"""DICOM networking: presentation contexts, the storage SCP, and SCUs."""
