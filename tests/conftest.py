"""Fixtures shared by several test modules."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Return the team data folder named by COLDPROMPT_SHARED_DATA.

    Skips the test when the variable is unset, unless COLDPROMPT_REQUIRE_SHARED_DATA=1 makes that a failure.
    """
    value = os.environ.get("COLDPROMPT_SHARED_DATA")
    if not value:
        if os.environ.get("COLDPROMPT_REQUIRE_SHARED_DATA") == "1":
            pytest.fail("COLDPROMPT_REQUIRE_SHARED_DATA=1 but COLDPROMPT_SHARED_DATA is not set; set it to the data folder")
        pytest.skip("COLDPROMPT_SHARED_DATA is not set; set it to the team data folder to run this test")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"COLDPROMPT_SHARED_DATA={value} is not a directory")
    return path


def pytest_collection_modifyitems(config, items):
    """Skip tests marked slow unless COLDPROMPT_RUN_SLOW=1 (CI sets it)."""
    if os.environ.get("COLDPROMPT_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set COLDPROMPT_RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
