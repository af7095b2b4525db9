"""Debian's headless Chromium driven by Playwright: what the browser tests share.

A test tool's own browser download cannot run here. The flags keep Chromium off the network
(at start it would call Google's hosts) and out of the GPU. CI installs both (bootstrap.sh):
there a missing one fails instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Screenshots for a reviewer to look at (not committed).
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def require(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def launch_chromium(extra_args: Sequence[str] = ()) -> Iterator[Any]:
    """A Playwright Browser on Debian's Chromium, closed afterwards (for a fixture to yield);
    `extra_args` go after CHROMIUM_ARGS (a fake camera for the consult room, say)."""
    require(CHROMIUM.exists(), f"no {CHROMIUM}: apt-get install chromium (bootstrap.sh does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *extra_args]
        )
        yield browser
        browser.close()
