"""WebRTC signalling for consults: rooms, lobby, presence, relay; join tokens from the hub."""

from signaling.protocol import PROTOCOL_VERSION, CloseCode, MessageType, ProtocolError
from signaling.server import Limits, SignalingServer, SignalingThread, server_from_settings

__all__ = [
    "PROTOCOL_VERSION",
    "CloseCode",
    "Limits",
    "MessageType",
    "ProtocolError",
    "SignalingServer",
    "SignalingThread",
    "server_from_settings",
]
