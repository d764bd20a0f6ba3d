"""Finding a headless browser for the tests that render pages: a missing browser skips the test on a
developer's machine and fails it under CI (``CI`` set), where .ci/run installs Debian's chromium."""

from __future__ import annotations

import os
import shutil

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    path = next((p for p in map(shutil.which, NAMES) if p), None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no chromium is installed: .ci/run installs it with apt-get install chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI installs it")
    return path
