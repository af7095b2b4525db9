"""The consortium tree and which DICOM callers belong to which member."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from telehealth.clock import SYSTEM_CLOCK, Clock
from telehealth.errors import Conflict, Forbidden, Invalid, NotFound
from telehealth.institutions.models import ApplicationEntity, Institution, InstitutionLevel


class InstitutionNotFound(NotFound): ...


class InstitutionExists(Conflict): ...


class AeTitleExists(Conflict): ...


class InvalidAeTitle(Invalid): ...


class CallerRefused(Forbidden):
    """A DICOM caller is not registered, or calls from an address it is not tied to."""


class MoveDestinationUnknown(NotFound):
    """A C-MOVE names an AE title that is not registered, or has no host and port to send to."""


def get_institution(session: Session, code: str) -> Institution:
    institution = session.scalar(select(Institution).where(Institution.code == code))
    if institution is None:
        raise InstitutionNotFound(f"no institution {code}")
    return institution


def list_institutions(session: Session) -> list[Institution]:
    return list(session.scalars(select(Institution).order_by(Institution.id)))


def add_institution(
    session: Session,
    *,
    code: str,
    name: str,
    level: InstitutionLevel,
    parent_code: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Institution:
    """Raises InstitutionExists, InstitutionNotFound (parent)."""
    code = code.strip()
    if not code or len(code) > 64:
        raise Invalid("institution code must have 1 to 64 characters")
    if session.scalar(select(Institution.id).where(Institution.code == code)) is not None:
        raise InstitutionExists(f"institution {code} already exists")
    parent = get_institution(session, parent_code) if parent_code else None
    institution = Institution(
        code=code,
        name=name,
        level=InstitutionLevel(level),
        parent_id=parent.id if parent else None,
        created_at=clock.now(),
    )
    session.add(institution)
    session.flush()
    return institution


class InstitutionCycle(Invalid):
    """A move would put an institution below itself."""


class ApplicationEntityNotFound(NotFound): ...


def get_institution_by_id(session: Session, institution_id: int) -> Institution:
    institution = session.get(Institution, institution_id)
    if institution is None:
        raise InstitutionNotFound(f"no institution {institution_id}")
    return institution


def update_institution(
    session: Session,
    institution_id: int,
    *,
    name: str,
    level: InstitutionLevel,
    parent_code: str | None,
) -> tuple[Institution, list[str]]:
    """Rename an institution or move it under another; its code stays (rules and AE titles
    name it). Returns the institution and the names of the fields that changed.

    Raises InstitutionNotFound, InstitutionCycle, Invalid.
    """
    institution = get_institution_by_id(session, institution_id)
    name = name.strip()
    if not name or len(name) > 200:
        raise Invalid("institution name must have 1 to 200 characters")
    parent = get_institution(session, parent_code) if parent_code else None
    if parent is not None and parent.id in subtree_ids(session, institution.id):
        raise InstitutionCycle(f"{institution.code} cannot move below itself")
    changed = []
    if name != institution.name:
        institution.name = name
        changed.append("name")
    if InstitutionLevel(level) != institution.level:
        institution.level = InstitutionLevel(level)
        changed.append("level")
    parent_id = parent.id if parent else None
    if parent_id != institution.parent_id:
        institution.parent_id = parent_id
        changed.append("parent")
    session.flush()
    return institution, changed


def subtree_ids(session: Session, institution_id: int) -> set[int]:
    """The institution and every institution below it in the consortium tree."""
    children: dict[int | None, list[int]] = {}
    for child_id, parent_id in session.execute(select(Institution.id, Institution.parent_id)):
        children.setdefault(parent_id, []).append(child_id)
    found = {institution_id}
    frontier = [institution_id]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:  # a cycle cannot loop us forever
                found.add(child)
                frontier.append(child)
    return found


def normalise_ae_title(ae_title: str) -> str:
    """PS3.5: up to 16 characters, no backslash or control characters; spaces are padding."""
    title = ae_title.strip()
    if not title or len(title) > 16 or "\\" in title or any(ord(c) < 32 for c in title):
        raise InvalidAeTitle(f"invalid AE title {ae_title!r}")
    return title


class InvalidHost(Invalid): ...


def normalise_host(host: str | None) -> str | None:
    """The address calls under an AE title must come from; None accepts any address."""
    host = (host or "").strip()
    if not host:
        return None
    if len(host) > 255 or any(c.isspace() or ord(c) < 32 for c in host):
        raise InvalidHost(f"invalid host {host!r}")
    return host


def add_application_entity(
    session: Session,
    *,
    ae_title: str,
    institution_code: str,
    host: str | None = None,
    port: int | None = None,
    tls: bool = False,
    description: str = "",
    clock: Clock = SYSTEM_CLOCK,
) -> ApplicationEntity:
    """Raises AeTitleExists, InvalidAeTitle, InvalidHost, InstitutionNotFound."""
    title = normalise_ae_title(ae_title)
    if session.scalar(select(ApplicationEntity.id).where(ApplicationEntity.ae_title == title)):
        raise AeTitleExists(f"AE title {title} is already registered")
    institution = get_institution(session, institution_code)
    entity = ApplicationEntity(
        ae_title=title,
        institution_id=institution.id,
        host=normalise_host(host),
        port=port,
        tls=tls,
        description=description,
        created_at=clock.now(),
    )
    session.add(entity)
    session.flush()
    return entity


def get_application_entity(session: Session, entity_id: int) -> ApplicationEntity:
    entity = session.get(ApplicationEntity, entity_id)
    if entity is None:
        raise ApplicationEntityNotFound(f"no AE title {entity_id}")
    return entity


def update_application_entity(
    session: Session,
    entity_id: int,
    *,
    ae_title: str,
    institution_code: str,
    host: str | None = None,
    port: int | None = None,
    tls: bool | None = None,
    description: str = "",
) -> ApplicationEntity:
    """Replace an AE title's registration. An empty host accepts the title from any address;
    `tls` None keeps the current setting.

    Raises ApplicationEntityNotFound, AeTitleExists, InvalidAeTitle, InvalidHost,
    InstitutionNotFound.
    """
    entity = get_application_entity(session, entity_id)
    title = normalise_ae_title(ae_title)
    other = session.scalar(select(ApplicationEntity.id).where(ApplicationEntity.ae_title == title))
    if other is not None and other != entity.id:
        raise AeTitleExists(f"AE title {title} is already registered")
    entity.ae_title = title
    entity.institution_id = get_institution(session, institution_code).id
    entity.host = normalise_host(host)
    entity.port = port
    if tls is not None:
        entity.tls = tls
    entity.description = description
    session.flush()
    return entity


def delete_application_entity(session: Session, entity_id: int) -> ApplicationEntity:
    """Forget an AE title: its calls are refused from now on. Raises ApplicationEntityNotFound."""
    entity = get_application_entity(session, entity_id)
    session.delete(entity)
    session.flush()
    return entity


def list_application_entities(session: Session) -> list[ApplicationEntity]:
    return list(session.scalars(select(ApplicationEntity).order_by(ApplicationEntity.ae_title)))


@dataclass(frozen=True)
class Caller:
    """A DICOM caller that may talk to the node, and the institution it acts for."""

    ae_title: str
    address: str
    institution_id: int
    registered: bool


def authorize_caller(
    session: Session,
    ae_title: str,
    address: str,
    *,
    accept_unknown: bool = False,
    unknown_institution_code: str | None = None,
) -> Caller:
    """Decide whether a calling AE may associate.

    Raises CallerRefused for an unregistered title (unless unknown callers are accepted) and
    for a registered title calling from an address other than the one it is tied to.
    """
    title = ae_title.strip()
    entity = session.scalar(select(ApplicationEntity).where(ApplicationEntity.ae_title == title))
    if entity is not None:
        if entity.host and entity.host != address:
            raise CallerRefused(f"AE title {title} is registered for another host")
        return Caller(title, address, entity.institution_id, registered=True)
    if not accept_unknown:
        raise CallerRefused(f"AE title {title} is not registered")
    if unknown_institution_code:
        owner = get_institution(session, unknown_institution_code)
    else:
        owner = session.scalar(
            select(Institution).where(Institution.parent_id.is_(None)).order_by(Institution.id)
        )
        if owner is None:
            raise CallerRefused("no institution to receive studies from unknown callers")
    return Caller(title, address, owner.id, registered=False)


@dataclass(frozen=True)
class MoveDestination:
    """Where a C-MOVE sends: a registered AE with the address it listens on."""

    ae_title: str
    host: str
    port: int
    institution_id: int
    tls: bool = False  # connect with TLS and verify the peer's certificate


def get_move_destination(session: Session, ae_title: str) -> MoveDestination:
    """The registered AE a C-MOVE names: the SCP must know every Move Destination itself.

    Raises MoveDestinationUnknown for a title nobody registered, or one registered without a
    host and port (a modality that only stores). Never guesses an address from the caller:
    sending patient data to wherever a request points would leak it.
    """
    title = ae_title.strip()
    entity = session.scalar(select(ApplicationEntity).where(ApplicationEntity.ae_title == title))
    if entity is None:
        raise MoveDestinationUnknown(f"move destination {title!r} is not registered")
    if not entity.host or not entity.port:
        raise MoveDestinationUnknown(f"move destination {title!r} has no host and port")
    return MoveDestination(title, entity.host, entity.port, entity.institution_id, entity.tls)
