"""Schemathesis over the generated OpenAPI schema against a live studio: no 5xx, and every
response conforms to the documented schema (bounded number of examples per operation)."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (dev extra)")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    response_schema_conformance,
    status_code_conformance,
)
from studio_fixtures import live_server, make_settings  # noqa: E402

from aigc.studio.app import create_app  # noqa: E402
from aigc.studio.service import StudioSettings  # noqa: E402

# The schema does not depend on the loaded models: build it without starting the app.
schema = schemathesis.openapi.from_dict(create_app(StudioSettings()).openapi())


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    with live_server(make_settings(tmp_path_factory.mktemp("fuzz"))) as base:
        yield base


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_openapi_no_server_errors(case, base_url):
    # call_and_validate raises when any check fails; the status is asserted explicitly too.
    response = case.call_and_validate(base_url=base_url, checks=[
        not_a_server_error, response_schema_conformance, status_code_conformance])
    assert response.status_code < 500, response.text
