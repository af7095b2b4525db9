"""What QIDO-RS and WADO-RS share: UID checks and the errors both raise."""

from __future__ import annotations

import re

from telehealth.errors import BadRequest, NotFound

# PS3.5 §9.1: digits and dots, no leading zero rule enforced here (old modalities break it).
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class BadDicomwebRequest(BadRequest):
    """A query parameter or a UID in the path that cannot be understood."""


class SeriesNotFound(NotFound):
    """No such series in the study, or not one the actor may see."""


def check_uid(value: str, what: str) -> str:
    """Return the UID unchanged; raise BadDicomwebRequest unless it is digits and dots."""
    if len(value) > 64 or not _UID.match(value):
        raise BadDicomwebRequest(f"{what} is not a valid UID: {value[:80]!r}")
    return value
