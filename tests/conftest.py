"""Two tiers: the default tier is fast; tests marked ``slow`` train for real and run only with
``AIGC_SLOW=1``."""

import os

import pytest

# fresh, built: the native kernels' state undecided, built in a temporary cache
pytest_plugins = ["native_fixtures"]

# One route for each of the kernels measured per machine (aigc.models.layers.linear_route for
# float32 linear layers; aigc.models.native for GPT's GELU, attention and fused MLP, Llama
# decoding's small operations, the UNets' 3x3 convolutions and GroupNorm + SiLU), so results do
# not depend on a timing taken while the tests load the machine, and no kernels.json is written
# into the user's cache, by this process or by the commands the tests launch (they inherit the
# environment). Taken from the modules' own lists: AIGC_MLP_ROUTE, missing from a hand-written
# list, let the launched GPT trainings measure the MLP under the suite's load and write the
# result into ~/.cache/aigc/kernels.json. tests/test_layers_linear.py and
# tests/test_native_{kernels,conv,groupnorm,mlp}.py test the measured choice and both routes.
from aigc.models import layers, native  # noqa: E402

for _env in (layers.ROUTE_ENV, *native.ROUTE_ENVS.values()):
    os.environ.setdefault(_env, "torch")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("AIGC_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow tier: set AIGC_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
