"""Fixtures for running the hub as several processes: Redis, a channel of one's own."""

from __future__ import annotations

import os
import uuid

import pytest
import redis

REDIS_URL = os.environ.get("TELEHEALTH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis server; tests that need it are skipped with the reason when it is down."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {type(exc).__name__}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def channel() -> str:
    """A channel per test: tests running side by side on one Redis never hear each other."""
    return f"telehealth-test:{uuid.uuid4().hex[:12]}"
