"""Every error answer is a short FHIR OperationOutcome (CDS Hooks 3.0 recommends it).

Messages name the field and the problem, never the offending value: values may be PHI.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    412: "incomplete",
    413: "too-long",
    415: "not-supported",
    500: "exception",
}


def operation_outcome(
    status: int, diagnostics: str | list[str], headers: dict[str, str] | None = None
) -> JSONResponse:
    messages = [diagnostics] if isinstance(diagnostics, str) else diagnostics
    body: dict[str, Any] = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": ISSUE_CODES.get(status, "processing"),
                "diagnostics": message,
            }
            for message in messages
        ],
    }
    return JSONResponse(
        body, status_code=status, headers=headers, media_type="application/fhir+json"
    )


def describe_validation_errors(errors: list[dict[str, Any]], limit: int = 10) -> list[str]:
    """'context.patientId: Field required' - location and message only, no input values."""
    described = []
    for error in errors[:limit]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = error.get("msg", "invalid")
        if error.get("type") == "json_invalid":
            message = "malformed JSON"
        described.append(f"{location}: {message}" if location else message)
    return described
