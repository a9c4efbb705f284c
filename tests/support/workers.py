"""Which worker process of `serve --workers N` answered a call, and hook calls that reach
every worker: a test of what the workers share (metrics summed over them) proves nothing
while one worker served everything, which the kernel, not the test, decides."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.support.waiting import wait_for

CONCURRENT_CALLS = 8


def worker_of(response: httpx.Response) -> str:
    """The answering worker: request ids begin with a prefix of each app instance."""
    return response.headers["x-request-id"].rsplit("-", 1)[0]


def calls_on_every_worker(url: str, request: dict[str, Any], workers: int) -> Counter[str]:
    """POST `request` to `url`, several at once and each on a new connection, until `workers`
    different workers have answered; every answer must be a 200. Returns calls per worker."""
    served: Counter[str] = Counter()

    def call(_: int) -> str:
        with httpx.Client() as client:  # a new connection each: spread over the workers
            response = client.post(url, json=request, timeout=30)
        assert response.status_code == 200, response.text
        return worker_of(response)

    def every_worker_served() -> bool:
        served.update(pool.map(call, range(CONCURRENT_CALLS)))
        return len(served) == workers

    with ThreadPoolExecutor(CONCURRENT_CALLS) as pool:
        wait_for(every_worker_served, f"hook calls answered by {workers} workers")
    return served
