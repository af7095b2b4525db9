"""A real signalling server on a free loopback port, join tokens, and a raw protocol client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from signaling import Limits, SignalingServer
from telehealth.consults.tokens import ConsultRole, derive_join_key, issue_join_token

KEY = derive_join_key("test-hub-secret-" + "x" * 32)
T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    """Run one test's coroutine; a hang fails the test instead of the whole run."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def token(
    consult: int = 1,
    user: int = 1,
    role: ConsultRole = ConsultRole.GUEST,
    *,
    key: str = KEY,
    issued: datetime | None = None,
    ttl: float = 120,
) -> str:
    value, _ = issue_join_token(
        key,
        user_id=user,
        consult_id=consult,
        role=role,
        name=f"user{user}",
        now=issued or datetime.now(UTC),
        ttl=timedelta(seconds=ttl),
    )
    return value


@asynccontextmanager
async def running(limits: Limits | None = None) -> AsyncIterator[SignalingServer]:
    server = SignalingServer(KEY, limits=limits)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Client:
    """Speaks protocol v1 by hand, to test what a browser or a misbehaving peer would send."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.peer = ""

    @classmethod
    async def open(cls, server: SignalingServer, room: int = 1, path: str = "") -> Client:
        return cls(await connect(f"{server.url}{path or f'/rooms/{room}'}", compression=None))

    @classmethod
    async def join(cls, server: SignalingServer, join_token: str, room: int = 1) -> Client:
        client = await cls.open(server, room)
        await client.send("join", token=join_token)
        welcome = await client.expect("welcome")
        client.peer = welcome["peer"]
        return client

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"v": 1, "type": kind, **fields}))

    async def expect(
        self, kind: str, within: float = 5, where: Callable[[dict[str, Any]], bool] = bool
    ) -> dict[str, Any]:
        """The next message of this kind; others before it are skipped."""
        deadline = time.monotonic() + within
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic()))
            message: dict[str, Any] = json.loads(raw)
            if message["type"] == kind and where(message):
                return message

    async def closed_with(self, within: float = 5) -> int | None:
        """Drain until the server closes the socket; its close code."""
        try:
            async with asyncio.timeout(within):
                async for _ in self.ws:
                    pass
        except ConnectionClosed:
            pass
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
