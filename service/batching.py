"""Dynamic batching of searches, as Triton's dynamic batcher does for a model's requests.

Concurrent search requests against one table with the same k, metric and oversample (and, for
searches by stored id, the same exclude_self) wait in one queue, and one kernel call answers all
their queries: a batch of queries scans each stored row once for all of them (4 or more take the
tiled row scan, the PQ scans share their table loads), so under many concurrent one-query
searches a server answers up to about twice the requests a second it answers one call a request
(benchmarks/batching_bench.py).

A table has at most one batch in flight per kind of search: the requests that arrive while it
runs form the next one. With a delay, a batch also waits that long after its oldest request
arrived for more to join, unless it is full before. Off by default (max_queries 0).

Each request is checked on its own before it joins a queue (`Table.check_search_args`,
`check_queries`, `Table.check_query_ids`), so a bad one is refused with the message it would get
alone and never reaches a batch. Should a batched call still fail (a key deleted meanwhile),
every request of the batch still waited for runs again alone and gets its own answer or error.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from runtime.table import Table

log = logging.getLogger("embserve")

SearchResult = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SearchCall:
    """What requests sharing a batch have in common besides the table: the checked search
    arguments, and exclude_self for searches by stored id (None: by query vectors)."""

    k: int
    metric: str
    oversample: int
    exclude_self: bool | None = None


RunSearch = Callable[[Table, np.ndarray, SearchCall], Awaitable[SearchResult]]
"""(table, queries (q, dim) float32 or query ids (q,) int64, call) -> ids (q, k') int64, scores
(q, k') float32"""
ObserveBatch = Callable[[str, int, int], None]
"""(table name, requests, queries) of each batched call, for the metrics"""


@dataclass
class _Waiting:
    queries: np.ndarray
    """(q, dim) float32, or query ids (q,) int64; checked"""
    arrived: float
    answer: asyncio.Future[SearchResult]


@dataclass
class _Queue:
    table: Table
    name: str
    waiting: deque[_Waiting] = field(default_factory=deque)
    queued: int = 0
    """queries of the requests waiting"""
    full: asyncio.Event = field(default_factory=asyncio.Event)
    """set while the waiting queries fill a batch (a delayed batch stops waiting)"""
    task: asyncio.Task[None] | None = None
    """the drain answering this queue (held, so the loop's weak reference is not the only one)"""


class SearchBatcher:
    """Searches of fewer than `max_queries` queries joined into kernel calls of up to
    `max_queries` queries (a request's queries never split); `delay_seconds`: how long a batch
    waits after its oldest request arrived for more to join. One per event loop."""

    def __init__(self, max_queries: int, delay_seconds: float, run: RunSearch, observe: ObserveBatch) -> None:
        if max_queries < 2:
            raise ValueError(f"max_queries must be at least 2, got {max_queries}")
        self.max_queries = max_queries
        self.delay_seconds = delay_seconds
        self._run = run
        self._observe = observe
        self._queues: dict[tuple[int, SearchCall], _Queue] = {}

    def takes(self, queries: int) -> bool:
        """Whether a request of this many queries is batched (larger ones run alone)."""
        return 0 < queries < self.max_queries

    @property
    def queues(self) -> int:
        """Queues with requests waiting or a batch running (0 when idle)."""
        return len(self._queues)

    async def search(self, table: Table, name: str, queries: np.ndarray, call: SearchCall) -> SearchResult:
        """queries (q, dim) float32 (or query ids (q,) int64 with call.exclude_self set), checked
        against the table (served as `name`), call's arguments checked -> ids (q, k') int64,
        scores (q, k') float32, as `table.search` (`search_by_id`) answers them."""
        loop = asyncio.get_running_loop()
        # the table object itself is in the key: a table replaced by an admin load is a new
        # object, so a batch never mixes two versions; the queue holds the table, so its id
        # stays unique for as long as the key exists
        key = (id(table), call)
        queue = self._queues.get(key)
        if queue is None:  # a queue lives as long as its drain: it starts draining at once
            queue = self._queues[key] = _Queue(table, name)
            # a context of its own: the drain outlives the request that started it
            queue.task = loop.create_task(self._drain(key, queue, call), context=contextvars.Context())
        waiting = _Waiting(queries, loop.time(), loop.create_future())
        queue.waiting.append(waiting)
        queue.queued += queries.shape[0]
        if queue.queued >= self.max_queries:
            queue.full.set()
        # a caller cancelled meanwhile (client gone) cancels its own future only: a batch not yet
        # taken leaves it out, one running answers the others
        return await waiting.answer

    async def _drain(self, key: tuple[int, SearchCall], queue: _Queue, call: SearchCall) -> None:
        """Answer queue's requests batch after batch until none waits, then forget the queue."""
        loop = asyncio.get_running_loop()
        batch: list[_Waiting] = []
        try:
            while queue.waiting:
                if self.delay_seconds > 0 and not queue.full.is_set():
                    remaining = queue.waiting[0].arrived + self.delay_seconds - loop.time()
                    if remaining > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(queue.full.wait(), remaining)
                batch = self._take(queue)
                if batch:
                    await self._answer(queue, batch, call)
                batch = []
        except asyncio.CancelledError:  # the loop is closing: the requests held end with it
            for left in (*batch, *queue.waiting):
                left.answer.cancel()
            raise
        except Exception as error:
            # a fault of the batcher itself: every request it holds fails with it (a 500), none hangs
            log.exception("search batch for table %r failed", queue.name)
            for left in (*batch, *queue.waiting):
                _settle(left.answer, error=error)
        finally:
            # nothing awaits between the loop's last test and here, so no request joined meanwhile
            if self._queues.get(key) is queue:
                del self._queues[key]

    def _take(self, queue: _Queue) -> list[_Waiting]:
        """The oldest waiting requests, up to max_queries queries (at least one request); those
        whose caller is gone are dropped."""
        batch: list[_Waiting] = []
        taken = 0
        while queue.waiting:
            head = queue.waiting[0]
            size = head.queries.shape[0]
            if batch and taken + size > self.max_queries:
                break
            queue.waiting.popleft()
            queue.queued -= size
            if head.answer.done():
                continue
            batch.append(head)
            taken += size
        if queue.queued < self.max_queries:
            queue.full.clear()
        return batch

    async def _answer(self, queue: _Queue, batch: list[_Waiting], call: SearchCall) -> None:
        table = queue.table
        try:
            queries = batch[0].queries if len(batch) == 1 else np.concatenate([w.queries for w in batch])
            ids, scores = await self._run(table, queries, call)
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0].answer, error=error)
                return
            # which request it was is unknown: each one still waited for runs again alone (side
            # by side, as without batching) and gets its own answer or error
            alive = [w for w in batch if not w.answer.done()]
            outcomes = await asyncio.gather(*(self._run(table, w.queries, call) for w in alive), return_exceptions=True)
            for waiting, outcome in zip(alive, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    _settle(waiting.answer, error=outcome)
                else:
                    _settle(waiting.answer, outcome)
            return
        start = 0
        for waiting in batch:
            stop = start + waiting.queries.shape[0]
            _settle(waiting.answer, (ids[start:stop], scores[start:stop]))
            start = stop
        self._observe(queue.name, len(batch), queries.shape[0])


def _settle(
    answer: asyncio.Future[SearchResult], result: SearchResult | None = None, error: BaseException | None = None
) -> None:
    """Give a waiting request its result or error, unless its caller is gone."""
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        assert result is not None
        answer.set_result(result)


__all__ = ["SearchBatcher", "SearchCall"]
