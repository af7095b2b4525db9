"""DICOMweb logic without HTTP: QIDO-RS search, WADO-RS reads and metadata, STOW-RS stores."""

from telehealth.dicomweb.service.common import BadDicomwebRequest, SeriesNotFound, check_uid
from telehealth.dicomweb.service.frames import (
    BulkDataNotFound,
    CorruptPixelData,
    FrameNotFound,
    NotAcceptable,
    NotAnImage,
    Parts,
    PixelsNotDecodable,
    check_bulk_path,
    parse_frame_numbers,
    retrieve_bulk_data,
    retrieve_frames,
)
from telehealth.dicomweb.service.metadata_cache import MetadataWarmer, metadata_texts
from telehealth.dicomweb.service.multipart import (
    MalformedMultipart,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
)
from telehealth.dicomweb.service.qido import Level, SearchResult, search
from telehealth.dicomweb.service.rendered import (
    Rendered,
    RenderOptions,
    parse_render_options,
    parse_rendered_frame,
    render_instance,
    render_thumbnail,
)
from telehealth.dicomweb.service.stow import (
    FailedInstance,
    RequestTooLarge,
    StoredInstance,
    StowLimits,
    StowResult,
    store_instances,
)
from telehealth.dicomweb.service.wado import (
    InstanceRef,
    bulk_data_uri_handler,
    instance_metadata,
    read_each,
    read_instance_bytes,
    retrieve_targets,
)

__all__ = [
    "BadDicomwebRequest",
    "BulkDataNotFound",
    "CorruptPixelData",
    "FailedInstance",
    "FrameNotFound",
    "InstanceRef",
    "Level",
    "MalformedMultipart",
    "MetadataWarmer",
    "MultipartReader",
    "NotAcceptable",
    "NotAnImage",
    "PartData",
    "PartEnd",
    "PartStart",
    "Parts",
    "PixelsNotDecodable",
    "RenderOptions",
    "Rendered",
    "RequestTooLarge",
    "SearchResult",
    "SeriesNotFound",
    "StoredInstance",
    "StowLimits",
    "StowResult",
    "bulk_data_uri_handler",
    "check_bulk_path",
    "check_uid",
    "instance_metadata",
    "metadata_texts",
    "parse_frame_numbers",
    "parse_render_options",
    "parse_rendered_frame",
    "read_each",
    "read_instance_bytes",
    "render_instance",
    "render_thumbnail",
    "retrieve_bulk_data",
    "retrieve_frames",
    "retrieve_targets",
    "search",
    "store_instances",
]
