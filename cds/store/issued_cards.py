"""The cards this process answered with, written to the database in batches.

Feedback names only a card's uuid. To count feedback per card topic (the metric, and
`twitch-cds feedback-report`), the database must know the topic of each issued uuid. Writing
that row inside every hook call would add a database transaction (an fsync, on SQLite) to
the time the EHR waits, so a call only appends to a list; one background task writes what
accumulated every `interval` seconds, and once more at shutdown. Feedback arriving at
another replica within that second counts as topic "unknown" in the metric; the report,
which joins when it runs, still finds the topic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool

from cds.cdshooks import Card
from cds.logs import log
from cds.store.storage import FeedbackStore, IssuedCard


class IssuedCards:
    def __init__(
        self, store: FeedbackStore, interval: float = 1.0, max_pending: int = 50_000
    ) -> None:
        self.store = store
        self.interval = interval
        self.max_pending = max_pending  # bound while the database is down
        self._pending: list[IssuedCard] = []

    def record(self, service_id: str, cards: Iterable[Card]) -> None:
        now = datetime.now(UTC)
        self._pending += [
            IssuedCard(card.uuid, service_id, card.source.topic.code, card.indicator, now)
            for card in cards
            if card.source.topic is not None
        ]
        if len(self._pending) > self.max_pending:
            dropped = len(self._pending) - self.max_pending
            del self._pending[:dropped]
            log.warning("issued cards dropped before reaching the database", dropped=dropped)

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await run_in_threadpool(self.store.record_issued, batch)
        except Exception as error:  # kept for the next round; the hook calls go on
            log.warning("issued cards not written", error=type(error).__name__, pending=len(batch))
            self._pending = batch + self._pending

    async def run(self) -> None:
        """Flush every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()
