"""Coalesce concurrent requests into bounded batches for one model worker.

Requests from many cases arrive concurrently; the model is fastest when it sees them
together. A MicroBatcher queues items, waits at most `max_wait_s` after the first one
for more, and hands at most `max_batch` items that share a key (e.g. the same image
size) to `process`, which runs on a single worker thread so the event loop stays free
and the device sees one batch at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from regen.common import metrics
from regen.common.errors import NotReady, Overloaded

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    busy_s: float = 0.0
    batches: int = 0
    items: int = 0
    started_at: float = field(default_factory=time.monotonic)


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    key: Hashable


class MicroBatcher(Generic[T, R]):
    """`process(items) -> results` maps a batch to results in order; a result that is
    an Exception fails only its own item."""

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int = 4096,
        key: Callable[[T], Hashable] | None = None,
        name: str = "model",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._process = process
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._key = key or (lambda _item: None)
        self._queue: deque[_Pending[T, R]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-worker")
        self.stats = BatchStats()
        self.name = name
        self._closed = False

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-batcher")

    def submit(self, items: Sequence[T]) -> list[asyncio.Future[R]]:
        """Queue items; return one future per item. Raises Overloaded when full."""
        if self._closed:
            raise NotReady(f"{self.name} is shutting down")
        live = self._live()
        if live + len(items) > self.max_queue:
            raise Overloaded(f"{self.name} queue is full ({live} waiting, limit {self.max_queue}); retry later")
        self._ensure_started()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = []
        for item in items:
            fut: asyncio.Future[R] = loop.create_future()
            self._queue.append(_Pending(item, fut, self._key(item)))
            futures.append(fut)
        assert self._wakeup is not None
        self._wakeup.set()
        metrics.QUEUE_DEPTH.labels(self.name).set(self._live())
        return futures

    def _live(self) -> int:
        return sum(1 for p in self._queue if not p.future.done())

    async def run(self, items: Sequence[T]) -> list[R]:
        """Submit and wait for all results; cancelling the caller drops queued items."""
        futures = self.submit(items)
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    def _take_batch(self) -> list[_Pending[T, R]]:
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()  # cancelled while queued
        if not self._queue:
            return []
        key = self._queue[0].key
        batch: list[_Pending[T, R]] = []
        rest: deque[_Pending[T, R]] = deque()
        while self._queue and len(batch) < self.max_batch:
            pending = self._queue.popleft()
            if pending.future.done():
                continue
            (batch if pending.key == key else rest).append(pending)
        rest.extend(self._queue)
        self._queue = rest
        return batch

    def _ready_count(self) -> int:
        if not self._queue:
            return 0
        key = self._queue[0].key
        return sum(1 for p in self._queue if p.key == key and not p.future.done())

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self.max_wait_s
            while self._ready_count() < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self._process, [p.item for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} items")
            except Exception as exc:
                results = [exc] * len(batch)
            finally:
                busy = time.monotonic() - started
                self.stats.busy_s += busy
                self.stats.batches += 1
                self.stats.items += len(batch)
                metrics.BUSY_SECONDS.labels(self.name).inc(busy)
                metrics.ITEMS.labels(self.name).inc(len(batch))
                metrics.BATCH_SIZE.labels(self.name).observe(len(batch))
                metrics.QUEUE_DEPTH.labels(self.name).set(self._live())
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(NotReady(f"{self.name} is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
