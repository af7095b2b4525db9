"""DICOMweb logic without HTTP: QIDO-RS matching over the index, WADO-RS reads and metadata."""

from telehealth.dicomweb.service.common import BadDicomwebRequest, SeriesNotFound, check_uid
from telehealth.dicomweb.service.metadata_cache import MetadataWarmer, metadata_texts
from telehealth.dicomweb.service.qido import Level, SearchResult, search
from telehealth.dicomweb.service.wado import (
    InstanceRef,
    instance_metadata,
    read_each,
    retrieve_targets,
)

__all__ = [
    "BadDicomwebRequest",
    "InstanceRef",
    "Level",
    "MetadataWarmer",
    "SearchResult",
    "SeriesNotFound",
    "check_uid",
    "instance_metadata",
    "metadata_texts",
    "read_each",
    "retrieve_targets",
    "search",
]
