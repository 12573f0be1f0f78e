"""Two tiers: the default tier is fast; tests marked ``slow`` train for real and run only with
``AIGC_SLOW=1``."""

import os

import pytest

# fresh, built: the native kernels' state undecided, built in a temporary cache
pytest_plugins = ["native_fixtures"]

# One float32 linear route for the whole suite (aigc.models.layers.linear_route), so results do
# not depend on a timing taken while the tests load the machine, and no kernels.json is written
# into the user's cache; tests/test_layers_linear.py tests the measured choice and both routes.
os.environ.setdefault("AIGC_LINEAR_ROUTE", "torch")
# Likewise the native kernels (aigc.models.native: GPT's GELU, Llama decoding's small
# operations, attention, the UNets' 3x3 convolutions and GroupNorm + SiLU):
# tests/test_native_{kernels,conv,groupnorm}.py build them and test them against ATen's.
os.environ.setdefault("AIGC_GELU_ROUTE", "torch")
os.environ.setdefault("AIGC_DECODE_ROUTE", "torch")
os.environ.setdefault("AIGC_ATTENTION_ROUTE", "torch")
os.environ.setdefault("AIGC_CONV_ROUTE", "torch")
os.environ.setdefault("AIGC_GROUPNORM_ROUTE", "torch")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("AIGC_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow tier: set AIGC_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
