"""Fetching what the EHR did not prefetch from its FHIR server (CDS Hooks §Prefetch).

All queries of one request run concurrently and share one deadline, so a slow FHIR server
cannot make the EHR wait past it. Outbound calls go only to allowed base URLs (the service
must not become a way to reach arbitrary hosts), and the access token is sent only to the
request's own `fhirServer`, never logged, never stored.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from cds import metrics
from cds.decision.catalog import PrefetchTemplate

_TOKEN = re.compile(r"\{\{\s*context\.([A-Za-z]+)\s*\}\}")


class FetchError(Exception):
    """One template could not be fetched; `reason` is safe to show to the EHR."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FetchResult:
    key: str
    resources: list[dict[str, Any]]
    error: str | None = None


def is_allowed(base: str, allowed: list[str]) -> bool:
    """Whether `base` lies under one of the allowed base URLs (scheme, host, port, path).

    A string-prefix test would let `http://127.0.0.1.evil.example` pass for
    `http://127.0.0.1`, so the URL is compared part by part; paths by whole segments, so that
    `https://ehr.example/fhir` does not allow `https://ehr.example/fhir-other`, and not at all
    when the path has an (encoded) `..` that a server could resolve above the allowed prefix.
    """
    try:
        url = httpx.URL(base)
    except (httpx.InvalidURL, TypeError):
        return False
    if any(segment in (".", "..") for segment in url.path.split("/")):
        return False
    for entry in allowed:
        rule = httpx.URL(entry)
        prefix = rule.path.rstrip("/")
        if (
            url.scheme == rule.scheme
            and url.host == rule.host
            and (rule.port is None or url.port == rule.port)
            and (url.path.rstrip("/") == prefix or url.path.startswith(prefix + "/"))
        ):
            return True
    return False


def resolve_template(template: str, context: dict[str, Any]) -> str:
    """Fill `{{context.x}}` tokens from the hook context (primitive values only)."""

    def replace(match: re.Match[str]) -> str:
        value = context.get(match[1])
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise FetchError(f"context.{match[1]} is not available")
        return quote(str(value), safe="")

    resolved = _TOKEN.sub(replace, template)
    if "{{" in resolved:
        raise FetchError("template has an unsupported token")
    return resolved


class FhirFetcher:
    """Fetches prefetch templates from a FHIR server. One instance serves all requests."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        allowed_bases: list[str],
        timeout_seconds: float,
        max_pages: int,
    ) -> None:
        self.client = client
        self.allowed_bases = allowed_bases
        self.timeout_seconds = timeout_seconds
        self.max_pages = max_pages

    async def fetch(
        self,
        base: str,
        token: str | None,
        templates: list[PrefetchTemplate],
        context: dict[str, Any],
    ) -> list[FetchResult]:
        """Fetch every template concurrently; each result carries its resources or an error."""
        base = base.rstrip("/")
        if not is_allowed(base, self.allowed_bases):
            return [
                FetchResult(t.key, [], "fhirServer is not an allowed FHIR base URL")
                for t in templates
            ]
        headers = {"Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        tasks = [asyncio.ensure_future(self._one(base, headers, t, context)) for t in templates]
        _, pending = await asyncio.wait(tasks, timeout=self.timeout_seconds)
        for task in pending:
            task.cancel()
        results = []
        for template, task in zip(templates, tasks, strict=True):
            if task in pending:
                results.append(FetchResult(template.key, [], "FHIR server did not answer in time"))
            else:
                results.append(task.result())
        metrics.count_fhir_fallback((r.key, r.error is not None) for r in results)
        return results

    async def _one(
        self,
        base: str,
        headers: dict[str, str],
        template: PrefetchTemplate,
        context: dict[str, Any],
    ) -> FetchResult:
        try:
            url: str | None = f"{base}/{resolve_template(template.template, context)}"
            resources: list[dict[str, Any]] = []
            for _ in range(self.max_pages):
                if url is None:
                    break
                body = await self._get(url, headers)
                if body.get("resourceType") != "Bundle":
                    return FetchResult(template.key, [body])
                entries = body.get("entry")
                for entry in entries if isinstance(entries, list) else []:
                    if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                        resources.append(entry["resource"])
                url = _next_link(body, base)
            else:
                if url is not None:
                    raise FetchError(f"more than {self.max_pages} pages")
            return FetchResult(template.key, resources)
        except FetchError as error:
            return FetchResult(template.key, [], error.reason)

    async def _get(self, url: str, headers: dict[str, str]) -> dict[str, Any]:
        try:
            response = await self.client.get(url, headers=headers)
        except httpx.TimeoutException as error:
            raise FetchError("FHIR server timed out") from error
        except httpx.HTTPError as error:
            raise FetchError("FHIR server unreachable") from error
        if response.status_code in (401, 403):
            raise FetchError(f"FHIR server refused access ({response.status_code})")
        if response.status_code != 200:
            raise FetchError(f"FHIR server answered {response.status_code}")
        try:
            body = response.json()
        except ValueError as error:
            raise FetchError("FHIR server sent invalid JSON") from error
        if not isinstance(body, dict) or body.get("resourceType") == "OperationOutcome":
            raise FetchError("FHIR server sent no resource")
        return body


def _next_link(bundle: dict[str, Any], base: str) -> str | None:
    """The Bundle's `next` page, only when it stays on the same server (token included)."""
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if not isinstance(url, str):
                return None
            if not url.startswith(base + "/") and not url.startswith(base + "?"):
                raise FetchError("next page points to another server")
            return url
    return None
