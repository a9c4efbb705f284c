"""The body budget (cds/web/middleware.py `BodyBudget`, `TWITCH_CDS_BODY_BUDGET_BYTES`): how many
bytes of request bodies one worker holds at once.

Unit: a request waits while the budget is spent and goes on when earlier ones give theirs
back; a body larger than the whole budget goes alone, never waiting forever. Live server: with
a budget of one body, concurrent calls all get their cards, one after another, and the worker
holds far less memory than with an ample budget; and large calls that fail leave no body
behind in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from bench.cases import CASES, body, card_codes
from cds.web.middleware import BodyBudget
from tests.conftest import SERVICE_PV, LiveServer
from tests.support.outcome import refusal

JSON = {"Content-Type": "application/json"}


def test_a_request_waits_while_the_budget_is_spent() -> None:
    async def scenario() -> list[str]:
        budget, order = BodyBudget(100), []

        async def request(name: str, size: int, work: float) -> None:
            held = await budget.take(size)
            order.append(f"{name} in")
            await asyncio.sleep(work)
            order.append(f"{name} out")
            await budget.give_back(held)

        first = asyncio.create_task(request("a", 60, 0.05))
        await asyncio.sleep(0)
        await asyncio.gather(first, request("b", 60, 0), request("c", 30, 0))
        assert budget.held == 0
        return order

    order = asyncio.run(scenario())
    # c fits beside a (90 of 100); b does not, and starts only after a gave its bytes back.
    assert order.index("c in") < order.index("a out") < order.index("b in")


def test_a_body_over_the_whole_budget_goes_alone_and_does_not_wait_forever() -> None:
    async def scenario() -> tuple[int, int]:
        budget = BodyBudget(100)
        small = await budget.take(10)
        waiting = asyncio.create_task(budget.take(10_000))
        await asyncio.sleep(0.01)
        assert not waiting.done(), "the large body waits for the small one"
        await budget.give_back(small)
        held = await asyncio.wait_for(waiting, timeout=1)
        return held, budget.held

    assert asyncio.run(scenario()) == (100, 100)


def test_concurrent_large_calls_all_answer_within_a_tiny_budget(
    start_server: Callable[..., LiveServer],
) -> None:
    payload = body(next(case for case in CASES if case.name == "x-large").build())
    tight = start_server(
        TWITCH_CDS_BODY_BUDGET_BYTES=str(len(payload)),
        TWITCH_CDS_MAX_BODY_BYTES=str(16 * 1024 * 1024),
    )
    ample = start_server(
        TWITCH_CDS_BODY_BUDGET_BYTES=str(64 * len(payload)),
        TWITCH_CDS_MAX_BODY_BYTES=str(16 * 1024 * 1024),
    )
    for server in (tight, ample):  # warm up: imports, caches, the first decision
        httpx.post(f"{server.base_url}/cds-services/{SERVICE_PV}", content=payload, headers=JSON)

    async def burst(server: LiveServer) -> list[set[str]]:
        url = f"{server.base_url}/cds-services/{SERVICE_PV}"
        async with httpx.AsyncClient(timeout=120) as client:
            responses = await asyncio.gather(
                *(client.post(url, content=payload, headers=JSON) for _ in range(16))
            )
        assert [r.status_code for r in responses] == [200] * 16
        return [card_codes(r.json()) for r in responses]

    answers = {name: asyncio.run(burst(s)) for name, s in (("tight", tight), ("ample", ample))}
    assert answers["tight"] == answers["ample"]
    assert len({frozenset(codes) for codes in answers["tight"]}) == 1
    peak = {name: _peak_rss_mb(s) for name, s in (("tight", tight), ("ample", ample))}
    # Sixteen 6.7 MB bodies held at once (107 MB), against one at a time.
    assert peak["tight"] + 40 < peak["ample"], peak
    print(f"peak RSS: tight budget {peak['tight']:.0f} MB, ample {peak['ample']:.0f} MB")


def _peak_rss_mb(server: LiveServer) -> float:
    """The worker's peak resident memory (VmHWM), in MB."""
    process = psutil.Process(server.process.pid)
    workers = process.children() or [process]
    peaks = []
    for worker in workers:
        status = Path(f"/proc/{worker.pid}/status").read_text()
        peaks.append(int(status.split("VmHWM:")[1].split()[0]) / 1024)
    return max(peaks)


def test_failed_large_calls_do_not_leave_their_bodies_in_memory(
    start_server: Callable[..., LiveServer],
) -> None:
    """A large call that fails (malformed JSON here; a client gone mid-upload is the same) leaves
    its body referenced from the error's traceback, a reference cycle: without a collection
    after it, ten 4 MB bodies stay held until the next full garbage collection."""
    server = start_server(TWITCH_CDS_MAX_BODY_BYTES=str(16 * 1024 * 1024))
    malformed = b'{"hook": "patient-view", "prefetch": {"a": "' + b"x" * (4 * 1024 * 1024) + b'"'
    url = f"{server.base_url}/cds-services/{SERVICE_PV}"
    with httpx.Client(timeout=60) as client:
        first = client.post(url, content=malformed, headers=JSON)
        assert "malformed JSON" in refusal(first, 400)
        before = _rss_mb(server)
        for _ in range(10):
            refusal(client.post(url, content=malformed, headers=JSON), 400)
        after = _rss_mb(server)
    assert after - before < 20, (before, after)


def _rss_mb(server: LiveServer) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024
