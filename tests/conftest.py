"""Two tiers: the default tier is fast; tests marked ``slow`` train for real and run only with
``AIGC_SLOW=1``."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("AIGC_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow tier: set AIGC_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
