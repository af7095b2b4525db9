"""Domain error categories and the one table that says how each looks on the wire.

Services raise exceptions named for what happened, in their own domain's words, each a
subclass of a category here. Only this module knows HTTP status codes and DIMSE statuses.
"""

from __future__ import annotations


class DomainError(Exception):
    """Something went wrong that the caller should hear about in plain words."""


class NotFound(DomainError): ...


class Gone(NotFound):
    """It existed and was removed on purpose (a retention rule): HTTP 410."""


class Unauthenticated(DomainError): ...


class Forbidden(DomainError): ...


class Conflict(DomainError): ...


class Invalid(DomainError): ...


class TooLarge(Invalid): ...


class BadRequest(Invalid):
    """The request itself is malformed (a query parameter, a UID in a path): HTTP 400."""


class NotAcceptable(DomainError):
    """Nothing the client accepts can be made of the resource (HTTP content negotiation)."""


class Overloaded(DomainError):
    """A resource is exhausted or a dependency is down; the sender should retry later."""


# (HTTP status, DIMSE status). DIMSE statuses from PS3.4 Annex B (Storage) and PS3.7 Annex C.
WIRE: dict[type[DomainError], tuple[int, int]] = {
    DomainError: (500, 0x0110),  # Processing Failure
    NotFound: (404, 0x0112),  # No Such SOP Instance
    Gone: (410, 0x0112),
    Unauthenticated: (401, 0x0124),  # Refused: Not Authorised
    Forbidden: (403, 0x0124),  # Refused: Not Authorised
    Conflict: (409, 0x0110),  # Processing Failure
    Invalid: (422, 0xC000),  # Error: Cannot Understand
    TooLarge: (413, 0xA700),  # Refused: Out of Resources
    BadRequest: (400, 0xC000),  # Error: Cannot Understand
    NotAcceptable: (406, 0xC000),  # Error: Cannot Understand
    Overloaded: (503, 0xA700),  # Refused: Out of Resources; the modality retries later
}


def wire_status(exc: DomainError) -> tuple[int, int]:
    """Return (HTTP status, DIMSE status) for a domain error: the nearest category wins."""
    return next(WIRE[c] for c in type(exc).__mro__ if c in WIRE)
