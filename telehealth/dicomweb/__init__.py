"""DICOMweb (PS3.18): QIDO-RS search and WADO-RS retrieve over the archive's index and store."""
