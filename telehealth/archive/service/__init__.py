"""The archive: one ingest path, spool, index, uploads to the object store, reads, fsck."""

from telehealth.archive.service.archive import (
    Archive,
    IngestResult,
    InstanceLocation,
    InstanceNotFound,
)
from telehealth.archive.service.fsck import FsckReport, fsck
from telehealth.archive.service.header import (
    InstanceHeader,
    MalformedInstance,
    MissingIdentifier,
    UnknownTransferSyntax,
    parse_header,
)
from telehealth.archive.service.index import (
    DuplicateRejected,
    IndexOutcome,
    Origin,
    StudyOwnedElsewhere,
)
from telehealth.archive.service.queries import (
    StudyFilter,
    StudyNotFound,
    StudyPage,
    get_study,
    list_studies,
    visible_study,
)
from telehealth.archive.service.read_cache import ReadCache
from telehealth.archive.service.recovery import RecoveryReport, recover_spool
from telehealth.archive.service.spool import Spool, SpoolFull, SpoolUnavailable
from telehealth.archive.service.stability import mark_stable_studies

__all__ = [
    "Archive",
    "DuplicateRejected",
    "FsckReport",
    "IndexOutcome",
    "IngestResult",
    "InstanceHeader",
    "InstanceLocation",
    "InstanceNotFound",
    "MalformedInstance",
    "MissingIdentifier",
    "Origin",
    "ReadCache",
    "RecoveryReport",
    "Spool",
    "SpoolFull",
    "SpoolUnavailable",
    "StudyFilter",
    "StudyNotFound",
    "StudyOwnedElsewhere",
    "StudyPage",
    "UnknownTransferSyntax",
    "fsck",
    "get_study",
    "list_studies",
    "mark_stable_studies",
    "parse_header",
    "recover_spool",
    "visible_study",
]
