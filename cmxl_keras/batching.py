"""Concurrent requests joined into batched model calls (``cli.py serve``'s ``Batcher``),
with the queue bounded."""

import asyncio
import logging

import numpy as np

from cmxl_keras.rest import BadRequest

LOG = logging.getLogger("cmxl.serve")


class Batcher:
    """Joins the requests waiting for one model function into batches: those that arrived
    while the model ran join at once, and the batch waits at most ``wait`` seconds more
    (0 by default: a lone request never waits), up to ``max_batch`` images; then one call
    runs them all in a worker thread (one at a time: a LiteRT interpreter is not
    thread-safe). At most ``max_queue`` images wait; past that a request is refused
    (503) instead of queued without bound."""

    def __init__(self, run, max_batch=64, wait=0.0, max_queue=1024, on_call=None):
        self.run, self.max_batch, self.wait, self.max_queue = run, max_batch, wait, max_queue
        self.pending, self.queued = asyncio.Queue(), 0
        self.task = None
        self.on_call = on_call  # told each model call's number of images (the metrics)

    async def __call__(self, inputs):
        if len(inputs) > self.max_queue:  # it could never be queued: no retry would help
            raise BadRequest(f"this request has {len(inputs)} images, more than the "
                             f"{self.max_queue} the server queues at once (--max-queue), so "
                             f"it can never be served whole. Send at most {self.max_queue} "
                             f"images per request (or raise --max-queue).", status=413)
        if self.queued + len(inputs) > self.max_queue:
            raise BadRequest(f"the server is busy: {self.queued} images are waiting, and it "
                             f"queues at most {self.max_queue} (--max-queue). Retry shortly.",
                             status=503)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        self.queued += len(inputs)
        await self.pending.put((inputs, future))
        return await future

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.pending.get()]
            size = len(batch[0][0])
            deadline = loop.time() + self.wait
            while size < self.max_batch:
                try:  # what arrived while the model ran joins at once, without waiting
                    item = self.pending.get_nowait()
                except asyncio.QueueEmpty:
                    if deadline - loop.time() <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.pending.get(),
                                                      deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
                batch.append(item)
                size += len(item[0])
            try:
                await self._answer(batch, loop)
            except Exception as error:  # a fault here must not stop the worker: say it
                LOG.exception("server fault: the batcher failed on a batch")
                for _, future in batch:
                    _settle(future, BadRequest(f"the server failed on this request: "
                                               f"{type(error).__name__}: {error}", 500))
            finally:
                self.queued -= size

    async def _answer(self, batch, loop):
        """Runs one batch and answers each request in it. If the model refuses the
        batch, each request is run alone, so only the one it refuses gets the error."""
        def joined(items):
            inputs = [x for item, _ in items for x in item]
            return np.stack(inputs) if isinstance(inputs[0], np.ndarray) else inputs

        try:
            out = await loop.run_in_executor(None, self.run, joined(batch))
        except Exception as error:  # the model's own refusal (TensorFlow's Assert)
            if len(batch) > 1:
                for one in batch:
                    await self._answer([one], loop)
                return
            refused = type(error).__name__ == "InvalidArgumentError"
            if not refused:  # the server's own fault: its stack, once
                LOG.error("server fault: the model failed on a request", exc_info=error)
            # TensorFlow's message names graph nodes around the reason: keep the reason.
            lines = [line.strip() for line in str(error).splitlines() if line.strip()
                     and not line.strip().startswith(("[[", "Detected at", "<stack",
                                                      "Graph execution error"))]
            reason = (lines[0] if lines else str(error))[:2000]
            _settle(batch[0][1], BadRequest(
                f"the model refused this request: {reason}. Send JPEG, PNG, GIF or BMP "
                f"files that decode." if refused else
                f"the model failed on this request: {type(error).__name__}: {reason}",
                status=400 if refused else 500))
            return
        if self.on_call is not None:
            self.on_call(len(out))
        start = 0
        for item, future in batch:
            _settle(future, out[start:start + len(item)])
            start += len(item)


def _settle(future, result):
    """Answers a waiting request, unless it is gone (its client hung up)."""
    if future.done():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
