"""Headless Debian chromium driven by Selenium (chromium-driver), launched as the workplace asks:
``--headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking
--disable-component-update --disable-sync`` and a fresh ``--user-data-dir``. ``.ci/run`` installs the
two apt packages; :func:`missing` says what is absent so a test can skip naming it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = ("chromium", "chromium-browser")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


def _binary() -> str | None:
    return next((path for name in CHROMIUM if (path := shutil.which(name))), None)


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the [dev] extra)"
    if _binary() is None or shutil.which("chromedriver") is None:
        return (
            "Debian's chromium and chromium-driver are not installed "
            "(apt-get install chromium chromium-driver; .ci/run installs them)"
        )
    return None


@contextmanager
def chromium(*extra_flags: str) -> Iterator[Any]:
    """A Selenium WebDriver of a fresh headless chromium (with ``extra_flags``), closed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="ddrnet-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(_binary())
        for flag in (*FLAGS, *extra_flags, f"--user-data-dir={Path(profile)}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            yield driver
        finally:
            driver.quit()
