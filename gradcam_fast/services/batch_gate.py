"""The gate before Ray Serve's batch queue: each batch's requests let in together, oldest first.

Ray Serve's `@serve.batch` forms the next batch as soon as the previous one is launched, not
when it has run. Without a gate, the requests that arrive during a run become a batch of
whatever came within the wait. With a gate that only opens when a batch has run, a crowd larger
than a batch leaves a leftover that Ray Serve closes into a batch of its own, an offset that then
recurs with the clients' cycle (batches of 7 and 1 instead of 8: benchmarks/RESULTS.md). So
requests are numbered as they arrive and, while no batch runs, those below a bound pass: when a
batch has run, the next `size` in order of arrival, then newcomers while places remain.
"""

from __future__ import annotations

import asyncio

__all__ = ["FULL_TIMEOUT_S", "BatchGate"]

FULL_TIMEOUT_S = 1.0  # the most a request waits at a full gate for its batch to start


class BatchGate:
    """Closed while a batch runs; then open to the next batch's requests, in order of arrival.
    One per replica, used from its event loop."""

    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._running = False  # a batch is running
        self._tickets = 0  # the next arriving request's number
        self._passed = 0  # one more than the highest number let through so far
        self._bound = 1  # numbers below it may pass while no batch runs: a lone request at once

    async def enter(self) -> None:
        """Wait until this request belongs to the next batch. A full gate is passed anyway
        after FULL_TIMEOUT_S if no batch has started: one whose requests were all cancelled
        never starts, and must not hold the others forever."""
        async with self._condition:
            ticket = self._tickets
            self._tickets += 1
            while self._running or ticket >= self._bound:
                if self._running:
                    await self._condition.wait()
                    continue
                try:
                    await asyncio.wait_for(self._condition.wait(), FULL_TIMEOUT_S)
                except asyncio.TimeoutError:
                    if not self._running:  # full, and still no batch has started
                        break
            self._passed = max(self._passed, ticket + 1)

    async def close(self) -> None:
        """A batch starts: requests arriving now wait for the next one."""
        async with self._condition:
            self._running = True

    async def open(self, size: int) -> None:
        """A batch has run: the next `size` requests may pass."""
        async with self._condition:
            self._running = False
            self._bound = self._passed + size
            self._condition.notify_all()
