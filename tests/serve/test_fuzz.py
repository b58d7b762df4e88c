"""Schemathesis fuzzes every operation of the server's OpenAPI schema over real HTTP: no input gives a 5xx,
and every 4xx is OpenAI's error JSON."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from textdiffusion.serve.engine import Limits

EXAMPLES = {"post": 40, "get": 3}


def test_no_input_gives_a_server_error(model_name, tiny_server):
    # tight limits: a request the schema admits but that would take long is refused (400) at once
    with tiny_server(limits=Limits(max_steps=8, max_n=2, max_length=64, max_seconds=5)) as (url, _):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {(op.method.upper(), op.path) for op in operations} >= {
            ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/v1/infill"),
            ("POST", "/v1/score"), ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/metrics")}
        statuses: dict[str, set[int]] = {}
        for op in operations:
            @settings(max_examples=EXAMPLES[op.method.lower()], deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy())
            def check(case):
                if isinstance(case.body, dict) and "model" in case.body and case.body.get("n", 0) != 2:
                    case.body["model"] = model_name  # reach past the model check on most examples
                response = case.call(base_url=url, timeout=30)
                statuses.setdefault(case.operation.path, set()).add(response.status_code)
                assert response.status_code < 500, (case.body, response.text[:500])
                if response.status_code >= 400:
                    error = response.json()["error"]
                    assert error["message"] and error["type"] == "invalid_request_error"

            check()
        # the fuzzing reached the sampler, not only the validator
        assert 200 in statuses["/v1/completions"] and 400 in statuses["/v1/completions"]


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
