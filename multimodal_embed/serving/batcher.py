"""Batching across requests: one queue per model, one model thread, batches under a token and image budget.

Requests from every client put :class:`Work` on their model's :class:`Batcher`. The batcher's loop (a task on the
server's event loop) takes what is queued, waits at most ``max_wait_ms`` for more while the model is idle, and runs
the batch on the model's own thread, so accepting requests and ``/metrics`` never wait for a forward pass (and
``/health`` probes the model on that thread only while it is idle). While a batch runs, new work queues up and
forms the next batch. A batch calls the public :meth:`~multimodal_embed.Embedder.embed_text` once per (task, dimensions, truncation) group and
:meth:`~multimodal_embed.Embedder.embed_images_with_errors` once for its images, so every answer is what those verbs
give on the same input, whatever it was batched with (text batches run packed, so neighbours add no padding;
rows differ by fp32 rounding only, <= 1e-6).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..encoders import ImageFailure

logger = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The model's queue holds ``max_queue`` items already: shed the request (HTTP 429)."""


class BatcherClosedError(Exception):
    """The batcher is draining or stopped: no new work (HTTP 503)."""


@dataclass
class Work:
    """One request's items for one model: texts (with their embedding options) or images."""

    kind: str  # "text" or "image"
    items: list[Any]
    cost: int  # tokens (texts) or images: what counts against the batch budget
    options: tuple[Any, ...] = ()  # texts: (task, dimensionality, long_text)
    future: asyncio.Future | None = None
    cancelled: bool = False


@dataclass
class TextResult:
    vectors: np.ndarray


@dataclass
class ImageResult:
    vectors: np.ndarray  # rows for the items that decoded, in ``indices`` order
    indices: list[int]
    failures: list[ImageFailure]


class Batcher:
    """The queue and loop of one model. ``await submit(work)`` returns a :class:`TextResult` or
    :class:`ImageResult` for it, or raises what the model raised for its group."""

    def __init__(self, embedder: Any, name: str, *, max_batch_tokens: int = 8192, max_batch_texts: int = 64,
                 max_batch_images: int = 32, max_wait_ms: float = 2.0, max_queue: int = 4096,
                 on_batch: Callable[[str, int], None] | None = None) -> None:
        self.embedder = embedder
        self.name = name
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_texts = max_batch_texts
        self.max_batch_images = max_batch_images
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: deque[Work] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mmembed-model-{name}")
        self._closing = False
        self._queued_tokens = self._queued_texts = self._queued_images = 0  # running totals of the queue
        self._busy_since: float | None = None  # when the model thread started what it runs now

    @property
    def busy_for(self) -> float | None:
        """Seconds the model thread has been running its current batch (or call), None while it is idle."""
        since = self._busy_since
        return None if since is None else time.monotonic() - since

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._busy_since = time.monotonic()
        try:
            return fn(*args)
        finally:
            self._busy_since = None

    @property
    def queued_items(self) -> int:
        """Texts and images waiting (not yet in a running batch)."""
        return self._queued_texts + self._queued_images

    def _account(self, work: Work, sign: int) -> None:
        if work.kind == "text":
            self._queued_tokens += sign * work.cost
            self._queued_texts += sign * len(work.items)
        else:
            self._queued_images += sign * len(work.items)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    def close(self) -> None:
        """Refuse new work; queued and running work still completes."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()

    async def join(self) -> None:
        """Wait until the loop has finished every queued batch (after :meth:`close`)."""
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def run_in_model_thread(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model's thread (after any batch running now), e.g. the health probe: only this thread
        drives the model."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed, fn)

    # -- submitting ------------------------------------------------------------------------------------------
    def submit(self, work: Work) -> asyncio.Future:
        """Queue ``work``; the returned future resolves to its result. Raises :class:`QueueFullError` or
        :class:`BatcherClosedError` at once instead of queueing."""
        if self._closing or self._task is None:
            raise BatcherClosedError(f"model {self.name!r} is not accepting work")
        if self.queued_items + len(work.items) > self.max_queue and self.queued_items:
            raise QueueFullError(f"model {self.name!r} has {self.queued_items} items queued (limit {self.max_queue})")
        work.future = asyncio.get_running_loop().create_future()
        self._queue.append(work)
        self._account(work, +1)
        self._wake.set()
        return work.future

    def cancel(self, work: Work) -> None:
        """Drop ``work`` if it has not started (a client that went away, or its deadline passed)."""
        if work.cancelled:
            return
        work.cancelled = True
        try:
            self._queue.remove(work)
        except ValueError:
            return  # already taken into a batch: it finishes, and its answer is dropped
        self._account(work, -1)
        if work.future is not None and not work.future.done():
            work.future.cancel()

    # -- the loop --------------------------------------------------------------------------------------------
    def _take_batch(self) -> list[Work]:
        batch: list[Work] = []
        tokens = texts = images = 0
        while self._queue:
            work = self._queue[0]
            if work.kind == "text":
                fits = not batch or (tokens + work.cost <= self.max_batch_tokens
                                     and texts + len(work.items) <= self.max_batch_texts)
            else:
                fits = not batch or images + len(work.items) <= self.max_batch_images
            if not fits:
                break
            self._queue.popleft()
            self._account(work, -1)
            if work.kind == "text":
                tokens, texts = tokens + work.cost, texts + len(work.items)
            else:
                images += len(work.items)
            batch.append(work)
        return batch

    def _budget_full(self) -> bool:
        return (self._queued_tokens >= self.max_batch_tokens or self._queued_texts >= self.max_batch_texts
                or self._queued_images >= self.max_batch_images)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # The model is idle and work is waiting: give concurrent requests a moment to join the batch.
            deadline = loop.time() + self.max_wait
            while not self._budget_full() and not self._closing and loop.time() < deadline:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=max(deadline - loop.time(), 0))
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            results = await loop.run_in_executor(self._executor, self._timed, self._run, batch)
            for work, result in zip(batch, results):
                if work.future is None or work.future.done():
                    continue
                if isinstance(result, BaseException):
                    work.future.set_exception(result)
                else:
                    work.future.set_result(result)

    def _run(self, batch: list[Work]) -> list[Any]:
        """On the model thread: one call per text group and one for all images; results per work item."""
        results: list[Any] = [None] * len(batch)
        groups: dict[tuple[Any, ...], list[int]] = {}
        image_works: list[int] = []
        for i, work in enumerate(batch):
            if work.kind == "text":
                groups.setdefault(work.options, []).append(i)
            else:
                image_works.append(i)
        for (task, dim, long_text), members in groups.items():
            texts = [t for i in members for t in batch[i].items]
            try:
                vecs = self.embedder.embed_text(texts, task=task, dimensionality=dim, long_text=long_text,
                                                batch_size=max(len(texts), 1), show_progress=False)
            except Exception as exc:  # noqa: BLE001 - the group's requests get the error, the server goes on
                for i in members:
                    results[i] = exc
                continue
            start = 0
            for i in members:
                n = len(batch[i].items)
                results[i] = TextResult(vecs[start:start + n])
                start += n
            if self.on_batch:
                self.on_batch("text", len(texts))
        if image_works:
            items = [x for i in image_works for x in batch[i].items]
            try:
                res = self.embedder.embed_images_with_errors(items, batch_size=max(len(items), 1),
                                                             show_progress=False)
            except Exception as exc:  # noqa: BLE001
                for i in image_works:
                    results[i] = exc
            else:
                owner = [(i, j) for i in image_works for j in range(len(batch[i].items))]
                rows: dict[int, list[tuple[int, np.ndarray]]] = {i: [] for i in image_works}
                fails: dict[int, list[ImageFailure]] = {i: [] for i in image_works}
                for row, pos in enumerate(res.indices):
                    i, j = owner[pos]
                    rows[i].append((j, res.vectors[row]))
                for f in res.failures:
                    i, j = owner[f.index]
                    fails[i].append(ImageFailure(j, f.item, f.reason))
                dim = res.vectors.shape[1] if res.vectors.ndim == 2 else self.embedder.dim
                for i in image_works:
                    vecs = np.stack([v for _, v in rows[i]]) if rows[i] else np.zeros((0, dim), np.float32)
                    results[i] = ImageResult(vecs, [j for j, _ in rows[i]], fails[i])
                if self.on_batch:
                    self.on_batch("image", len(items))
        return results
