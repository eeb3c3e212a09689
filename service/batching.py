"""Micro-batching: concurrent requests' boxes go through onnxruntime in one call.

Requests submit ``(n, 3, H, W)`` arrays; a single worker task takes the first waiting request,
waits up to ``max_wait_s`` for more (up to ``max_boxes`` boxes in all), runs the network once in a
worker thread and hands each request its rows. A batch whose run fails is retried request by
request, so one bad request gets its own error without failing the others (as Triton's Python
backend does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Job:
    inputs: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """Collects concurrent inference requests into batches.

    Args:
        fn: ``(n, 3, H, W) float32 -> (n, d) float32``; called in a worker thread, one call at a time.
        max_boxes: most rows per call (a single larger request still runs, alone).
        max_wait_s: how long the first request of a batch waits for company, in seconds.
        input_shape: ``(3, H, W)`` every request must have (checked on submit).
        on_batch: optional callback ``(rows, requests, seconds)`` (metrics).
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        max_boxes: int,
        max_wait_s: float,
        input_shape: tuple[int, int, int],
        on_batch=None,
    ):
        self.fn = fn
        self.max_boxes = max(1, int(max_boxes))
        self.max_wait_s = float(max_wait_s)
        self.input_shape = tuple(input_shape)
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._worker(), name="whaleid-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, inputs: np.ndarray) -> np.ndarray:
        """Embed one request's boxes.

        Args:
            inputs: ``(n, 3, H, W) float32`` with ``n >= 1``.

        Returns:
            ``(n, d) float32``.

        Raises:
            ValueError: wrong shape or dtype (this request only).
            RuntimeError: the batcher is not running.
        """
        if self._queue is None or self._task is None:
            raise RuntimeError("the micro-batcher is not running")
        if inputs.ndim != 4 or tuple(inputs.shape[1:]) != self.input_shape or len(inputs) == 0:
            raise ValueError(f"inputs must be (n, {self.input_shape}), got {inputs.shape}")
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(np.ascontiguousarray(inputs, dtype=np.float32), fut))
        return await fut

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: _Job | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            jobs, rows = [first], len(first.inputs)
            deadline = loop.time() + self.max_wait_s
            while rows < self.max_boxes:
                timeout = deadline - loop.time()
                try:
                    job = (
                        self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                    )
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if rows + len(job.inputs) > self.max_boxes:
                    carry = job  # starts the next batch
                    break
                jobs.append(job)
                rows += len(job.inputs)
            jobs = [j for j in jobs if not j.future.cancelled()]
            if not jobs:
                continue
            await self._run(jobs, rows)

    async def _run(self, jobs: list[_Job], rows: int) -> None:
        t0 = time.perf_counter()
        try:
            out = await asyncio.to_thread(self.fn, np.concatenate([j.inputs for j in jobs]))
        except Exception:  # noqa: BLE001 - retry alone so one bad request cannot fail the others
            if len(jobs) == 1:
                self._fail(jobs[0], RuntimeError("inference failed for this request"))
                log.exception("inference failed")
                return
            for j in jobs:
                await self._run([j], len(j.inputs))
            return
        if self.on_batch is not None:
            self.on_batch(rows, len(jobs), time.perf_counter() - t0)
        start = 0
        for j in jobs:
            n = len(j.inputs)
            if not j.future.done():
                j.future.set_result(out[start : start + n])
            start += n

    @staticmethod
    def _fail(job: _Job, exc: Exception) -> None:
        if not job.future.done():
            job.future.set_exception(exc)
