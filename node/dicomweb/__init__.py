"""DICOMweb (PS3.18) apart from HTTP: what STOW-RS in stores and answers."""
