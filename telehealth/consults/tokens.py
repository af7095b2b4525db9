"""Join tokens for the signalling server and TURN REST API credentials.

No database here: the signalling server imports this module to verify tokens, and trusts
nothing else from the hub.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import jwt

JOIN_ALGORITHM = "HS256"
JOIN_AUDIENCE = "telehealth-signaling"
# The join key is derived, not the hub secret itself: a standalone signalling process holding
# it can verify join tokens but cannot mint login tokens.
_KEY_LABEL = b"telehealth/signaling/join-token/v1"


class ConsultRole(StrEnum):
    HOST = "host"  # the specialist: admits and removes, drives the shared viewer
    GUEST = "guest"
    # The hub's recording peer: needs no admission and no seat, and is let in only while
    # everyone in the room consents (signaling/server.py). Never a consult participant.
    RECORDER = "recorder"


class JoinTokenError(Exception):
    """A join token that cannot be used; `reason` is one of missing, invalid, expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"join token {reason}")
        self.reason = reason


@dataclass(frozen=True)
class JoinClaims:
    user_id: int
    consult_id: int
    role: ConsultRole
    name: str
    expires_at: int  # Unix seconds


def derive_join_key(hub_secret: str) -> str:
    return hmac.new(hub_secret.encode(), _KEY_LABEL, hashlib.sha256).hexdigest()


def issue_join_token(
    key: str,
    *,
    user_id: int,
    consult_id: int,
    role: ConsultRole,
    name: str,
    now: datetime,
    ttl: timedelta,
) -> tuple[str, datetime]:
    """A signed join token and its expiry."""
    expires = now + ttl
    claims = {
        "sub": str(user_id),
        "consult": consult_id,
        "role": str(role),
        "name": name,
        "aud": JOIN_AUDIENCE,
        "iat": int(now.timestamp()),
        "exp": int(expires.timestamp()),
    }
    return jwt.encode(claims, key, algorithm=JOIN_ALGORITHM), expires


def verify_join_token(key: str, token: object, *, now: float) -> JoinClaims:
    """Raises JoinTokenError("missing" | "invalid" | "expired")."""
    if not isinstance(token, str) or not token:
        raise JoinTokenError("missing")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[JOIN_ALGORITHM],
            audience=JOIN_AUDIENCE,
            # Expiry is checked against `now` below, so tests move time instead of sleeping.
            options={"require": ["sub", "consult", "role", "exp"], "verify_exp": False},
        )
        parsed = JoinClaims(
            user_id=int(claims["sub"]),
            consult_id=int(claims["consult"]),
            role=ConsultRole(claims["role"]),
            name=str(claims.get("name", "")),
            expires_at=int(claims["exp"]),
        )
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise JoinTokenError("invalid") from exc
    if parsed.expires_at <= now:
        raise JoinTokenError("expired")
    return parsed


@dataclass(frozen=True)
class TurnCredential:
    username: str
    password: str
    expires_at: int


def turn_credential(secret: str, user: str, *, now: datetime, ttl: timedelta) -> TurnCredential:
    """Ephemeral TURN credentials by the TURN REST API scheme coturn implements
    (draft-uberti-behave-turn-rest-00 §2.2; coturn --use-auth-secret):
    username "<expiry unix seconds>:<user>", password base64(HMAC-SHA1(secret, username)).
    """
    expires = int((now + ttl).timestamp())
    username = f"{expires}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expires)
