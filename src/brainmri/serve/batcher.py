"""Micro-batching: concurrent requests share one model call, off the event loop.

A worker task takes the first waiting upload, adds every other upload already queued (up to
`max_batch`) and runs them as one batch in an inference thread. A lone client is never delayed
(nothing waits for company); under concurrent load the queue fills while the model runs, so
batches form by themselves. `parallel` workers run that many batches at once (one per core
with single-threaded model calls). The event loop only parses HTTP and never blocks on the
model. What one batch is made of is the caller's business: the service's engine runs the
uploads of a batch that asked for the same `tta` as one model call (engine.Engine.classify).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

log = logging.getLogger("brainmri.serve")


class Batcher(Generic[Item, Result]):
    """Feed `run(items) -> results` (same length, same order) from many coroutines."""

    def __init__(
        self,
        run: Callable[[list[Item]], Sequence[Result]],
        max_batch: int = 16,
        max_waiting: int = 256,
        parallel: int = 1,
    ):
        self.run = run
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.parallel = max(1, parallel)
        self.executor = ThreadPoolExecutor(self.parallel, thread_name_prefix="brainmri-infer")
        self.queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._work()) for _ in range(self.parallel)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.executor.shutdown(wait=False, cancel_futures=True)

    def has_room(self, n: int) -> bool:
        """Whether n more items fit under `max_waiting` (callers answer 503 when not)."""
        return self.queue is None or self.queue.qsize() + n <= self.max_waiting

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """Results for `items`, in order (raises what `run` raised for their batch)."""
        if self.queue is None:
            raise RuntimeError("Batcher.start() was not called")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Result]] = []
        for item in items:
            fut: asyncio.Future[Result] = loop.create_future()
            self.queue.put_nowait((item, fut))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def _work(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            live = [(item, fut) for item, fut in batch if not fut.done()]
            if not live:
                continue
            try:
                results = await loop.run_in_executor(
                    self.executor, self.run, [item for item, _ in live]
                )
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
                log.exception("inference failed for a batch of %d", len(live))
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(live)
            for (_, fut), result in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
