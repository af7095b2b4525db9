"""Consortium administration: institutions and the AE titles of their modalities."""

from __future__ import annotations

from fastapi import APIRouter

from telehealth.auth import service as auth
from telehealth.deps import CurrentActor, HubDep, SessionDep
from telehealth.institutions import service
from telehealth.institutions.schemas import (
    ApplicationEntityIn,
    ApplicationEntityOut,
    InstitutionIn,
    InstitutionOut,
    InstitutionUpdateIn,
)

router = APIRouter(prefix="/api", tags=["institutions"])


@router.get("/institutions")
def list_institutions(actor: CurrentActor, session: SessionDep) -> list[InstitutionOut]:
    # Names of consortium members are not patient data; every logged-in user may list them.
    return [InstitutionOut.model_validate(i) for i in service.list_institutions(session)]


@router.post("/institutions", status_code=201)
def add_institution(
    body: InstitutionIn, actor: CurrentActor, session: SessionDep, hub: HubDep
) -> InstitutionOut:
    auth.require(actor, auth.Permission.ADMINISTER)
    institution = service.add_institution(
        session,
        code=body.code,
        name=body.name,
        level=body.level,
        parent_code=body.parent_code,
        clock=hub.clock,
    )
    auth.audit(session, actor, "institution.create", object_type="institution", object_id=body.code)
    return InstitutionOut.model_validate(institution)


@router.put("/institutions/{institution_id}")
def update_institution(
    institution_id: int, body: InstitutionUpdateIn, actor: CurrentActor, session: SessionDep
) -> InstitutionOut:
    """Rename an institution or move it elsewhere in the tree (admins)."""
    auth.require(actor, auth.Permission.ADMINISTER)
    institution, changed = service.update_institution(
        session, institution_id, name=body.name, level=body.level, parent_code=body.parent_code
    )
    if changed:
        auth.audit(
            session,
            actor,
            "institution.update",
            object_type="institution",
            object_id=institution.code,
            detail=", ".join(changed),
        )
    return InstitutionOut.model_validate(institution)


@router.get("/application-entities")
def list_application_entities(
    actor: CurrentActor, session: SessionDep
) -> list[ApplicationEntityOut]:
    auth.require(actor, auth.Permission.ADMINISTER)
    return [
        ApplicationEntityOut.model_validate(e) for e in service.list_application_entities(session)
    ]


@router.post("/application-entities", status_code=201)
def add_application_entity(
    body: ApplicationEntityIn, actor: CurrentActor, session: SessionDep, hub: HubDep
) -> ApplicationEntityOut:
    auth.require(actor, auth.Permission.ADMINISTER)
    entity = service.add_application_entity(
        session,
        ae_title=body.ae_title,
        institution_code=body.institution_code,
        host=body.host,
        port=body.port,
        tls=bool(body.tls),
        description=body.description,
        clock=hub.clock,
    )
    auth.audit(session, actor, "ae.create", object_type="ae", object_id=entity.ae_title)
    return ApplicationEntityOut.model_validate(entity)


@router.put("/application-entities/{entity_id}")
def update_application_entity(
    entity_id: int, body: ApplicationEntityIn, actor: CurrentActor, session: SessionDep
) -> ApplicationEntityOut:
    """Replace an AE title's registration: title, institution, host, port, TLS (admins)."""
    auth.require(actor, auth.Permission.ADMINISTER)
    before = service.get_application_entity(session, entity_id).ae_title
    entity = service.update_application_entity(
        session,
        entity_id,
        ae_title=body.ae_title,
        institution_code=body.institution_code,
        host=body.host,
        port=body.port,
        tls=body.tls,
        description=body.description,
    )
    detail = f"host={entity.host or '*'} port={entity.port or ''}" + (" tls" if entity.tls else "")
    if before != entity.ae_title:
        detail = f"renamed from {before}; {detail}"
    auth.audit(
        session, actor, "ae.update", object_type="ae", object_id=entity.ae_title, detail=detail
    )
    return ApplicationEntityOut.model_validate(entity)


@router.delete("/application-entities/{entity_id}", status_code=204)
def delete_application_entity(entity_id: int, actor: CurrentActor, session: SessionDep) -> None:
    """Forget an AE title; calls under it are refused from now on (admins)."""
    auth.require(actor, auth.Permission.ADMINISTER)
    entity = service.delete_application_entity(session, entity_id)
    auth.audit(session, actor, "ae.delete", object_type="ae", object_id=entity.ae_title)
