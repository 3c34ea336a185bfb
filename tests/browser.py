"""Headless Chromium from Debian's packages for the console's browser tests, driven by Playwright (its wheel
bundles its driver; it never downloads a browser here: it is pointed at /usr/bin/chromium). Installed when
missing and we may (root with apt, as tests/pgbouncer.py installs PgBouncer); a machine where it cannot be
installed skips those tests, saying why."""

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, async_playwright

CHROMIUM = "/usr/bin/chromium"
# No GPU, no QUIC, nothing fetched in the background: the browser speaks only to the test's server.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / ".artifacts" / "screenshots"


def ensure_chromium() -> str | None:
    """Why the browser tests cannot run (None: Chromium is there, installed now if it was missing)."""
    if Path(CHROMIUM).exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and apt-get cannot install it here (not root, or no apt)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = subprocess.run(["apt-cache", "policy", "chromium"], capture_output=True, text=True, check=False)
    if "Candidate:" not in policy.stdout or "Candidate: (none)" in policy.stdout:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    installed = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver", "fonts-dejavu-core"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    if not Path(CHROMIUM).exists():
        return f"apt-get could not install chromium: {installed.stderr[-500:]}"
    return None


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()
