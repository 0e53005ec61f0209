"""What every fixture that starts real parts (the control plane, the node, the scheduling plane) shares."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> None:
    """A part that cannot start: in CI a failure, never a skip; elsewhere a skip saying why."""
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def show(request, line: str) -> None:
    """Printed outside capture: the test log shows what started and what it cost."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")
