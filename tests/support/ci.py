"""CI's rule for a component a test needs: a skip on a developer's machine, a failure in CI."""
from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """CI=true (set by CI services and by .ci/run): the machine .ci/run prepared."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> None:
    """A component or condition this test needs is absent: a skip on a developer's machine, a
    failure in CI, where .ci/run installs every such component (so a green run means it ran)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run provides this, so the test fails instead of skipping)",
                    pytrace=False)
    pytest.skip(reason)
