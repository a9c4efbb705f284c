"""Chores a running service does in the background, in every worker process.

Expired JWT ids: the replay cache keeps each token's `jti` until the token expires, and an
expired token is refused anyway, so its row is useless from then on. Without a purge the
table would grow by one row per call, for ever. Every `REPLAY_PURGE_SECONDS` each worker
deletes the expired rows: an indexed DELETE, harmless when several workers or replicas run it
at the same time.
"""

from __future__ import annotations

import asyncio

from starlette.concurrency import run_in_threadpool

from cds.logs import log
from cds.store.storage import DatabaseReplayCache

REPLAY_PURGE_SECONDS = 300.0


async def purge_expired_tokens(cache: DatabaseReplayCache, interval: float) -> None:
    """Purge expired JWT ids every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            purged = await run_in_threadpool(cache.purge_expired)
        except Exception as error:  # the database may be down: try again next round
            log.warning("expired token ids not purged", error=type(error).__name__)
        else:
            if purged:
                log.info("expired token ids purged", count=purged)
