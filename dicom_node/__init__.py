"""The hub's DICOM application entity."""
