"""What a refused request gets back: a 4xx whose body is a FHIR OperationOutcome with a short
explanation (README "Bad input": never a 500, never a bare status). A test of a refusal checks
this body, not only the status code."""

from __future__ import annotations

import httpx


def refusal(response: httpx.Response, status: int) -> str:
    """Assert a `status` answer holding an OperationOutcome of errors, each with a short
    diagnostic; return the diagnostics joined by " | " for the test to check what they say."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/fhir+json"), response.headers
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    issues = body["issue"]
    assert issues and all(issue["severity"] == "error" for issue in issues), issues
    messages = [issue["diagnostics"] for issue in issues]
    assert all(0 < len(message) < 300 for message in messages), messages
    return " | ".join(messages)
