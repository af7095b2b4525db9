"""Join tokens and TURN REST API credentials: pure functions, known answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from telehealth.consults.tokens import (
    ConsultRole,
    JoinTokenError,
    derive_join_key,
    issue_join_token,
    turn_credential,
    verify_join_token,
)

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def test_turn_credential_follows_coturns_shared_secret_scheme() -> None:
    # Known answer from an independent implementation:
    #   echo -n "1700000000:42" | openssl dgst -sha1 -hmac north -binary | base64
    at = datetime.fromtimestamp(1_700_000_000 - 3600, tz=UTC)
    credential = turn_credential("north", "42", now=at, ttl=timedelta(hours=1))
    assert credential.username == "1700000000:42"
    assert credential.password == "DWX3FI7DiPIpadEYQAZsnZBAagI="
    assert credential.expires_at == 1_700_000_000


def test_join_token_round_trip_and_claims() -> None:
    key = derive_join_key("hub-secret")
    token, expires = issue_join_token(
        key, user_id=7, consult_id=3, role=ConsultRole.HOST, name="img1", now=NOW,
        ttl=timedelta(minutes=2),
    )  # fmt: skip
    assert expires == NOW + timedelta(minutes=2)
    claims = verify_join_token(key, token, now=NOW.timestamp() + 60)
    assert (claims.user_id, claims.consult_id, claims.role, claims.name) == (7, 3, "host", "img1")


def test_the_join_key_is_not_the_hub_secret() -> None:
    """A standalone signalling process holding the join key cannot mint login tokens."""
    key = derive_join_key("hub-secret")
    assert key != "hub-secret" and derive_join_key("other") != key


@pytest.mark.parametrize(
    ("token", "at", "reason"),
    [
        (None, 0, "missing"),
        ("", 0, "missing"),
        ("not-a-jwt", 0, "invalid"),
        ("forged", 0, "invalid"),
        ("login", 0, "invalid"),
        ("good", 121, "expired"),
    ],
)
def test_unusable_join_tokens_are_refused(token: str | None, at: int, reason: str) -> None:
    key = derive_join_key("hub-secret")
    good, _ = issue_join_token(
        key, user_id=7, consult_id=3, role=ConsultRole.GUEST, name="a", now=NOW,
        ttl=timedelta(minutes=2),
    )  # fmt: skip
    samples = {
        "good": good,
        # Same claims, signed with the hub secret itself instead of the derived key.
        "forged": jwt.encode(jwt.decode(good, options={"verify_signature": False}), "hub-secret"),
        # A login token (no audience, no consult) signed with the right key.
        "login": jwt.encode({"sub": "7", "exp": 2_000_000_000}, key),
    }
    with pytest.raises(JoinTokenError) as raised:
        verify_join_token(key, samples.get(token or "", token), now=NOW.timestamp() + at)
    assert raised.value.reason == reason
