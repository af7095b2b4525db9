"""Signalling protocol v1: JSON text frames, each an object with "v" and "type".

Client → server: join (first, with the token), offer, answer, candidate, leave, chat,
presence, admit, remove (host only), viewer-sync (host only), ping.
Server → client: welcome, lobby (to the host: who waits), admitted (to a guest), join, leave,
presence, offer, answer, candidate, chat, viewer-sync, pong, error.

Mesh negotiation: whoever enters the room (host on welcome, a guest on admitted) sends an
offer to every peer already in it; those answer. aiortc puts all its candidates in the SDP;
browsers trickle them with `candidate` ({candidate, sdpMid, sdpMLineIndex} as in W3C
RTCIceCandidateInit, or null at the end).

Recording consent (added to v1 without breaking it: old clients ignore the new server
message, and `welcome` says whether the server knows it: "features": ["recording-consent"]).
Client → server: consent {granted: bool}, allowed in the lobby too; kept per user while the
room exists. Server → everyone in the room and the lobby: recording {on, recorder, consented,
missing, reason}. A recorder (a join token with role "recorder", minted by the hub) is let in
only while everyone inside has consented (else closed with CONSENT_MISSING); the moment that
stops being true (a revocation, someone admitted without consent) it is closed with
CONSENT_REVOKED, and it stops when the last person leaves.
"""

from __future__ import annotations

import json
from enum import IntEnum, StrEnum
from typing import Any

PROTOCOL_VERSION = 1
MAX_CHAT_CHARS = 4000
MAX_ID_CHARS = 64


class CloseCode(IntEnum):
    """Why the server closed a socket (RFC 6455 §7.4.2: 4000–4999 are ours)."""

    BAD_MESSAGE = 4000  # malformed, wrong version, or not `join` first
    TOKEN_MISSING = 4001
    TOKEN_INVALID = 4002  # forged, or not a join token
    TOKEN_EXPIRED = 4003
    WRONG_ROOM = 4004  # a valid token for another consult
    ROOM_FULL = 4005
    REMOVED = 4006  # the host removed this participant
    RATE_LIMITED = 4007
    JOIN_TIMEOUT = 4008  # no join message in time
    REPLACED = 4009  # the same user joined again from another socket
    BAD_PATH = 4010  # not /rooms/<consult id>
    CONSENT_MISSING = 4011  # a recorder, while not everyone inside has consented
    CONSENT_REVOKED = 4012  # to the recorder: someone inside no longer consents
    NOBODY_LEFT = 4013  # to the recorder: the last person left the room
    GOING_AWAY = 1001  # the server shuts down
    TOO_BIG = 1009  # RFC 6455: message too big (websockets closes with it)


class MessageType(StrEnum):
    JOIN = "join"
    OFFER = "offer"
    ANSWER = "answer"
    CANDIDATE = "candidate"
    LEAVE = "leave"
    CHAT = "chat"
    PRESENCE = "presence"
    ADMIT = "admit"
    REMOVE = "remove"
    VIEWER_SYNC = "viewer-sync"
    PING = "ping"
    CONSENT = "consent"
    # Server → client only.
    PONG = "pong"
    WELCOME = "welcome"
    LOBBY = "lobby"
    ADMITTED = "admitted"
    ERROR = "error"
    RECORDING = "recording"


FEATURES = ("recording-consent",)  # additions to v1 this server understands


_STR, _BOOL, _OBJ = (str,), (bool,), (dict,)
# Fields each client message must (True) or may (False) carry, with their JSON types.
_FIELDS: dict[MessageType, dict[str, tuple[tuple[type, ...], bool]]] = {
    MessageType.JOIN: {"token": (_STR, False)},  # missing is refused with its own code
    MessageType.OFFER: {"to": (_STR, True), "sdp": (_STR, True)},
    MessageType.ANSWER: {"to": (_STR, True), "sdp": (_STR, True)},
    MessageType.CANDIDATE: {"to": (_STR, True), "candidate": ((dict, type(None)), True)},
    MessageType.LEAVE: {},
    MessageType.CHAT: {"text": (_STR, True)},
    MessageType.PRESENCE: {
        "audio": (_BOOL, False),
        "video": (_BOOL, False),
        "screen": (_BOOL, False),
    },
    MessageType.ADMIT: {"peer": (_STR, True)},
    MessageType.REMOVE: {"peer": (_STR, True)},
    MessageType.VIEWER_SYNC: {"state": (_OBJ, True)},
    MessageType.PING: {"id": ((str, int), False)},
    MessageType.CONSENT: {"granted": (_BOOL, True)},
}


class ProtocolError(ValueError):
    """A message that does not follow protocol v1."""


def parse(raw: str | bytes) -> dict[str, Any]:
    """One client message, checked against v1. Raises ProtocolError."""
    if isinstance(raw, bytes):
        raise ProtocolError("binary frames are not part of the protocol")
    try:
        message = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError("not JSON") from exc
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {message.get('v')!r}")
    try:
        kind = MessageType(str(message.get("type")))
        fields = _FIELDS[kind]
    except (ValueError, KeyError) as exc:
        raise ProtocolError(f"unknown message type {message.get('type')!r}") from exc
    for name, (types, required) in fields.items():
        if name not in message:
            if required:
                raise ProtocolError(f"{kind} needs {name}")
            continue
        value = message[name]
        # bool is an int to isinstance; a `true` where an id belongs is still wrong.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ProtocolError(f"{kind}.{name} has the wrong type")
    if kind == MessageType.CHAT and len(message["text"]) > MAX_CHAT_CHARS:
        raise ProtocolError(f"chat text over {MAX_CHAT_CHARS} characters")
    for name in ("to", "peer"):
        if name in fields and len(message[name]) > MAX_ID_CHARS:
            raise ProtocolError(f"{kind}.{name} is too long")
    message["type"] = kind
    return message


def encode(kind: MessageType, **fields: Any) -> str:
    return json.dumps({"v": PROTOCOL_VERSION, "type": str(kind), **fields}, separators=(",", ":"))
