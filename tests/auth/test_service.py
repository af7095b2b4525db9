"""Passwords, login and tokens, called directly on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import jwt
import pytest
from argon2 import PasswordHasher
from sqlalchemy.orm import Session, sessionmaker

from telehealth.auth import service as auth
from telehealth.auth.models import AuditEvent, AuditOutcome, Role, User
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.institutions.service import InstitutionNotFound
from tests.conftest import seed_consortium

SECRET = "test-signing-key-" + "k" * 64  # HS512 below wants 64 bytes or more
TTL = timedelta(hours=12)


@pytest.fixture
def user(session: Session, clock: FakeClock) -> User:
    seed_consortium(session)
    return auth.create_user(
        session,
        username="tech1",
        password="correct horse battery",
        role=Role.TECHNICIAN,
        institution_code="CLINIC_A",
        clock=clock,
    )


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- passwords --------------------------------------------------------------------------------


def test_password_is_stored_as_an_argon2id_hash(user: User) -> None:
    assert user.password_hash.startswith("$argon2id$")
    assert "correct horse battery" not in user.password_hash
    assert PasswordHasher().verify(user.password_hash, "correct horse battery")


def test_same_password_hashes_differently_each_time() -> None:
    # A per-hash salt: two users with one password must not share a hash.
    assert auth.hash_password("same password") != auth.hash_password("same password")


def test_authenticate_returns_the_user_for_the_right_password(session: Session, user: User) -> None:
    assert auth.authenticate(session, "tech1", "correct horse battery").id == user.id


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("tech1", "wrong password"),
        ("tech1", ""),
        ("tech1", "CORRECT HORSE BATTERY"),
        ("nobody", "correct horse battery"),
        ("TECH1", "correct horse battery"),
    ],
)
def test_authenticate_refuses_wrong_password_and_unknown_user(
    session: Session, user: User, username: str, password: str
) -> None:
    with pytest.raises(auth.BadCredentials) as caught:
        auth.authenticate(session, username, password)
    # One message for every cause, so the answer does not reveal which usernames exist.
    assert str(caught.value) == "wrong username or password"


def test_disabled_user_cannot_log_in_even_with_the_right_password(
    session: Session, user: User
) -> None:
    user.active = False
    session.flush()
    with pytest.raises(auth.BadCredentials):
        auth.authenticate(session, "tech1", "correct horse battery")


@pytest.mark.parametrize("password", ["", "short", "1234567"])
def test_weak_password_is_refused(session: Session, password: str) -> None:
    seed_consortium(session)
    with pytest.raises(auth.WeakPassword):
        auth.create_user(
            session,
            username="weak",
            password=password,
            role=Role.TECHNICIAN,
            institution_code="CLINIC_A",
        )
    assert session.query(User).filter_by(username="weak").first() is None


def test_duplicate_username_and_unknown_institution_are_refused(
    session: Session, user: User
) -> None:
    with pytest.raises(auth.UserExists):
        auth.create_user(
            session,
            username="tech1",
            password="another password",
            role=Role.SPECIALIST,
            institution_code="COUNTY",
        )
    with pytest.raises(InstitutionNotFound):
        auth.create_user(
            session,
            username="tech2",
            password="another password",
            role=Role.SPECIALIST,
            institution_code="NOWHERE",
        )


# --- tokens -----------------------------------------------------------------------------------


def test_issued_token_identifies_the_user(session: Session, user: User, clock: FakeClock) -> None:
    token = auth.issue_token(user, SECRET, ttl=TTL, clock=clock)
    assert auth.user_for_token(session, token, SECRET, clock=clock).id == user.id


def test_token_expires_after_its_ttl(session: Session, user: User, clock: FakeClock) -> None:
    token = auth.issue_token(user, SECRET, ttl=TTL, clock=clock)
    clock.advance(hours=11, minutes=59)
    assert auth.user_for_token(session, token, SECRET, clock=clock).id == user.id
    clock.advance(minutes=1, seconds=1)
    with pytest.raises(auth.BadToken, match="expired"):
        auth.user_for_token(session, token, SECRET, clock=clock)


def test_token_signed_with_another_secret_is_refused(
    session: Session, user: User, clock: FakeClock
) -> None:
    token = auth.issue_token(
        user, "some-other-hub-secret-key-of-decent-length", ttl=TTL, clock=clock
    )
    with pytest.raises(auth.BadToken):
        auth.user_for_token(session, token, SECRET, clock=clock)


def test_tampered_payload_is_refused(session: Session, user: User, clock: FakeClock) -> None:
    other = auth.create_user(
        session,
        username="admin",
        password="admin password",
        role=Role.ADMIN,
        institution_code="COUNTY",
        clock=clock,
    )
    header, payload, signature = auth.issue_token(user, SECRET, ttl=TTL, clock=clock).split(".")
    claims = jwt.decode(
        f"{header}.{payload}.{signature}",
        SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False},
    )
    claims["sub"] = str(other.id)  # become the admin while keeping the technician's signature
    with pytest.raises(auth.BadToken):
        auth.user_for_token(session, f"{header}.{_b64(claims)}.{signature}", SECRET, clock=clock)


def test_unsigned_alg_none_token_is_refused(session: Session, user: User, clock: FakeClock) -> None:
    now = int(clock.now().timestamp())
    claims = {"sub": str(user.id), "iat": now, "exp": now + 3600, "jti": "x"}
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(auth.BadToken):
        auth.user_for_token(session, unsigned, SECRET, clock=clock)
    # The same claims signed with the key's bytes under another algorithm are refused too.
    hs512 = jwt.encode(claims, SECRET, algorithm="HS512")
    with pytest.raises(auth.BadToken):
        auth.user_for_token(session, hs512, SECRET, clock=clock)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "Bearer x.y.z"])
def test_malformed_token_is_refused(
    session: Session, user: User, clock: FakeClock, token: str
) -> None:
    with pytest.raises(auth.BadToken):
        auth.user_for_token(session, token, SECRET, clock=clock)


def test_token_without_expiry_is_refused(session: Session, user: User, clock: FakeClock) -> None:
    token = jwt.encode({"sub": str(user.id), "iat": int(clock.now().timestamp())}, SECRET)
    with pytest.raises(auth.BadToken):
        auth.user_for_token(session, token, SECRET, clock=clock)


def test_token_of_a_disabled_user_is_refused(
    session: Session, user: User, clock: FakeClock
) -> None:
    token = auth.issue_token(user, SECRET, ttl=TTL, clock=clock)
    user.active = False
    session.flush()
    with pytest.raises(auth.BadToken):
        auth.user_for_token(session, token, SECRET, clock=clock)


def test_revoked_tokens_stop_working_and_new_ones_work(
    session: Session, user: User, clock: FakeClock
) -> None:
    token = auth.issue_token(user, SECRET, ttl=TTL, clock=clock)
    auth.revoke_tokens(session, user, clock=clock)
    session.flush()
    # Issued at the very instant of the logout: still revoked.
    same_instant = auth.issue_token(user, SECRET, ttl=TTL, clock=clock)
    for old in (token, same_instant):
        with pytest.raises(auth.BadToken, match="revoked"):
            auth.user_for_token(session, old, SECRET, clock=clock)
    # A login a few milliseconds later (same second) must work: revocation is not rounded.
    clock.advance(milliseconds=5)
    fresh = auth.issue_token(user, SECRET, ttl=TTL, clock=clock)
    assert auth.user_for_token(session, fresh, SECRET, clock=clock).id == user.id


def test_revocation_survives_a_new_session(
    factory: sessionmaker[Session], clock: FakeClock
) -> None:
    with transaction(factory) as session:
        seed_consortium(session)
        user = auth.create_user(
            session,
            username="spec",
            password="specialist password",
            role=Role.SPECIALIST,
            institution_code="COUNTY",
            clock=clock,
        )
        token = auth.issue_token(user, SECRET, ttl=TTL, clock=clock)
        auth.revoke_tokens(session, user, clock=clock)
    with transaction(factory) as session, pytest.raises(auth.BadToken):
        auth.user_for_token(session, token, SECRET, clock=clock)


# --- who may see what, and the audit trail ----------------------------------------------------


def test_roles_grant_only_their_permissions() -> None:
    tech = auth.Actor(name="t", role=Role.TECHNICIAN, institution_id=1)
    spec = auth.Actor(name="s", role=Role.SPECIALIST, institution_id=1)
    admin = auth.Actor(name="a", role=Role.ADMIN, institution_id=1)
    auth.require(tech, auth.Permission.SEND_STUDIES)
    with pytest.raises(auth.NotPermitted):
        auth.require(spec, auth.Permission.SEND_STUDIES)
    for actor in (tech, spec):
        with pytest.raises(auth.NotPermitted):
            auth.require(actor, auth.Permission.ADMINISTER)
    auth.require(admin, auth.Permission.ADMINISTER)


def test_visible_institutions_follow_the_tree(session: Session) -> None:
    ids = seed_consortium(session)
    tech = auth.Actor(name="t", role=Role.TECHNICIAN, institution_id=ids["CLINIC_A"])
    spec = auth.Actor(name="s", role=Role.SPECIALIST, institution_id=ids["COUNTY"])
    clinic_spec = auth.Actor(name="c", role=Role.SPECIALIST, institution_id=ids["CLINIC_B"])
    admin = auth.Actor(name="a", role=Role.ADMIN, institution_id=ids["CLINIC_A"])
    assert auth.visible_institutions(session, tech) == {ids["CLINIC_A"]}
    assert auth.visible_institutions(session, spec) == set(ids.values())
    assert auth.visible_institutions(session, clinic_spec) == {ids["CLINIC_B"]}
    assert auth.visible_institutions(session, admin) is None


def test_denied_audit_row_survives_a_rollback(factory: sessionmaker[Session]) -> None:
    with pytest.raises(RuntimeError), transaction(factory) as session:
        auth.audit(session, None, "auth.login", outcome=AuditOutcome.DENIED, object_id="eve")
        auth.audit(session, None, "study.list")  # a success is rolled back with its work
        raise RuntimeError("the request failed after the refusal")
    with transaction(factory) as session:
        rows = session.query(AuditEvent).all()
        assert [(r.action, r.outcome, r.object_id) for r in rows] == [
            ("auth.login", AuditOutcome.DENIED, "eve")
        ]
