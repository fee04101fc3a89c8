"""Drive the system Chromium with Playwright (never a downloaded browser); shared by the browser test
and the screenshot script."""

from __future__ import annotations

import importlib.util
import shutil
from typing import Final

CHROMIUM: Final = "/usr/bin/chromium"
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing() -> str | None:
    """Why a browser cannot be driven here (None when it can)."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    if shutil.which(CHROMIUM) is None:
        return f"{CHROMIUM} is absent (apt-get install chromium)"
    return None
