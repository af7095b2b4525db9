"""The web app's TypeScript type-checks (Vite only strips types; it does not check them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.browser import require

APP = Path(__file__).resolve().parents[2] / "viewer" / "app"


def test_typescript_has_no_type_errors(webapp_dist: Path) -> None:
    require(shutil.which("npx") is not None, "npm not installed")
    check = subprocess.run(
        ["npx", "--no-install", "tsc", "--noEmit", "-p", "."],
        cwd=APP,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
