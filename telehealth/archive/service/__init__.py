"""The archive: one ingest path, spool, index, uploads to the object store, reads, fsck."""

from telehealth.archive.models import IngestSource
from telehealth.archive.service.archive import (
    Archive,
    IncomingInstance,
    IngestResult,
    InstanceLocation,
    InstanceNotFound,
    InstancePurged,
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
from telehealth.auth.service import Actor


def origin_for(actor: Actor, source: IngestSource) -> Origin:
    """Origin of what a logged-in user sends over HTTP (upload, STOW-RS).

    The user's institution owns it, as a calling AE's institution owns what it C-STOREs;
    the client address goes into the index for tracing.
    """
    return Origin(source=source, institution_id=actor.institution_id, address=actor.address)


__all__ = [
    "Archive",
    "DuplicateRejected",
    "FsckReport",
    "IncomingInstance",
    "IndexOutcome",
    "IngestResult",
    "InstanceHeader",
    "InstanceLocation",
    "InstanceNotFound",
    "InstancePurged",
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
    "origin_for",
    "parse_header",
    "recover_spool",
    "visible_study",
]
