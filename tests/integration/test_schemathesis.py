"""Schemathesis against the OpenAPI document the gateway serves, once per credential kind.

The document is loaded from the live server's ``/openapi.json``; each run takes the operations
of one security scheme (admin token, device token, data-client token, customer JWT; the public
ones without a credential) and sends schema-valid and schema-violating requests (schemathesis'
positive and negative generation) with that credential. Checks (``CHECKS``): no 5xx, every 4xx
is problem+json with a ``type``, every status, media type and body is one the document declares
for the operation (schemathesis' conformance checks: the response schemas are generated from
the models, gateway.api.openapi). Every failing
request of a run is listed (as a curl command), not only the first; the ones ever found are kept
as plain requests in ``test_fuzz_http.REGRESSIONS`` (or, for a body that did not match its
schema, in ``test_openapi_conformance.REGRESSIONS``).

Schemathesis calls with ``requests`` (blocking), so it runs in a worker thread while the test's
event loop serves the gateway. Bounded for CI: a few examples per operation and mode.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok

from gateway.settings import Settings
from tests.support.fuzz_world import Client, build_world

PROBLEM = "application/problem+json"
#: examples per operation and generation mode (positive, negative); CI's bound. A deeper run:
#: METERPOORT_SCHEMATHESIS_EXAMPLES=200 (keep what it finds in test_fuzz_http.REGRESSIONS)
EXAMPLES = int(os.environ.get("METERPOORT_SCHEMATHESIS_EXAMPLES", "15"))
SCHEMES = {
    "admin": "adminToken",
    "device": "deviceToken",
    "client": "clientToken",
    "customer": "customerToken",
    "none": None,
}


@pytest.fixture
def gateway_settings(gateway_settings: Settings) -> Settings:
    """Dev mode: the gateway trusts the dev key the customer JWT is signed with."""
    return gateway_settings.model_copy(
        # hostile credentials on purpose, many from one address: throttling would answer 429
        # before the check under test (tests/integration/test_auth_throttle.py covers it)
        update={"dev_mode": True, "auth_failure_limit": 100_000}
    )


@schemathesis.check
def problem_json_for_client_errors(
    ctx: CheckContext, response: Response, case: Case[Any]
) -> bool | None:
    """Every 4xx is an RFC 9457 problem+json document with a ``type``."""
    if 400 <= response.status_code < 500:
        ctype = (response.headers.get("content-type") or [""])[0]
        if not ctype.startswith(PROBLEM):
            raise AssertionError(f"{response.status_code} answered as {ctype!r}, not {PROBLEM}")
        body = json.loads(response.content)
        if not isinstance(body, dict) or not body.get("type"):
            raise AssertionError(f"{response.status_code} problem without a type: {body!r}")
    return None


#: what every answer must satisfy: no 5xx, problem+json errors, and only statuses, media types
#: and bodies the document declares for the operation. Not ``negative_data_rejection``: the
#: credential is sent as an explicit header that overrides schemathesis' mutations of the
#: security header, so it reports requests as "schema-violating" that arrive valid (found with
#: 120 examples: a removed Authorization header that was sent all the same)
CHECKS = [
    not_a_server_error,
    problem_json_for_client_errors,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def scheme_of(operation: dict[str, Any]) -> str | None:
    security = operation.get("security") or [{}]
    return next(iter(security[0]), None)


def run_schemathesis(base_url: str, scheme: str | None, headers: dict[str, str]) -> list[str]:
    """Fuzz the operations of ``scheme``; every failing request as ``curl … → why``."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        if scheme_of(operation.definition.raw) != scheme:
            continue
        for mode in GenerationMode:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Case[Any]) -> None:
                response = case.call(base_url=base_url, headers=headers, timeout=30)
                try:
                    case.validate_response(response, checks=CHECKS)
                except (AssertionError, FailureGroup) as exc:
                    failures.append(
                        f"{case.as_curl_command(headers=headers, base_url=base_url)}"
                        f" → {response.status_code}: {exc}"
                    )

            try:
                fuzz()
            except Unsatisfiable:
                continue  # negative mode on an operation without inputs: nothing to violate
    return failures


@pytest.mark.parametrize("kind", list(SCHEMES))
async def test_schemathesis(
    kind: str,
    gateway_client: Client,
    gateway_settings: Settings,
    admin_headers: dict[str, str],
) -> None:
    world = await build_world(gateway_client, gateway_settings, admin_headers)
    base_url = str(gateway_client.make_url("")).rstrip("/")
    failures = await asyncio.to_thread(
        run_schemathesis, base_url, SCHEMES[kind], world.credentials[kind]
    )
    assert not failures, "\n".join(failures)
    resp = await gateway_client.get("/v1/me/connections", headers=world.credentials["customer"])
    assert resp.status == 200, await resp.text()
