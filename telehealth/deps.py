"""FastAPI dependencies shared by every router: the hub, a database session, the actor."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from telehealth.auth import service as auth
from telehealth.db import transaction
from telehealth.hub import Hub

SESSION_COOKIE = "telehealth_session"


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]


def get_session(hub: HubDep) -> Iterator[Session]:
    """One transaction per request, committed when the route returns without error."""
    with transaction(hub.factory) as session:
        yield session


# Commit before the response goes out ("function" scope): by default FastAPI ends a yield
# dependency after sending, so a client could get 200 for a write it cannot yet read back,
# or for a commit that then failed.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def get_actor(request: Request, hub: HubDep, session: SessionDep) -> auth.Actor:
    """The logged-in user, from a bearer token or the session cookie.

    Raises BadToken; the error handler answers 401.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        raise auth.BadToken("login required")
    user = auth.user_for_token(session, token.strip(), hub.secret, clock=hub.clock)
    return auth.actor_for(user, client_address(request))


CurrentActor = Annotated[auth.Actor, Depends(get_actor)]


def get_actor_outside_request_session(request: Request, hub: HubDep) -> auth.Actor:
    """The logged-in user, checked in a short transaction that ends before the route runs.

    For routes that write through a unit of work of their own (an upload calls
    archive.ingest): on SQLite every transaction takes the write lock (BEGIN IMMEDIATE), so
    holding the request's session during ingest would wait out busy_timeout and fail.
    Raises BadToken.
    """
    with transaction(hub.factory) as session:
        return get_actor(request, hub, session)


ActorOutsideSession = Annotated[auth.Actor, Depends(get_actor_outside_request_session)]
