"""CI switches with no heavy imports (the kernel tests also run on the lent GPU machine: torch + triton only)."""
import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository
TINY = os.path.join(ROOT, "configs", "tiny.yaml")                    # the tests' run config


def require(cond: bool, what: str):
    """Skip when a component is missing -- but fail under CI=true, where it must exist."""
    if not cond:
        if IN_CI:
            pytest.fail(f"{what} is required in CI (CI=true) but is missing")
        pytest.skip(f"{what} not available")
