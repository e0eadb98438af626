"""``cli.py serve``: an exported model behind TensorFlow Serving's REST API, and a page to
try it, on any machine.

The routes and their JSON are TensorFlow Serving's (its REST API reference): ``GET
/v1/models/NAME`` (status), ``GET /v1/models/NAME/metadata`` (the signatures), ``POST
/v1/models/NAME:predict`` (also under ``/versions/1``) with ``instances`` (row format,
answered as ``predictions``) or ``inputs`` (columnar, answered as ``outputs``), and errors
as ``{"error": "..."}``; so a client written for TensorFlow Serving works unchanged. Two
signatures, as the exported SavedModel has them: ``serving_default`` takes uint8 images
``images`` [N, H, W, 3]; ``serving_bytes`` takes encoded images ``image_bytes`` as
``{"b64": ...}``. ``GET /`` is a page that sends a picked or dropped image to
``serving_bytes`` and shows the likeliest classes.

The model runs on LiteRT (the fp32 TFLite file: no TensorFlow imported) or as the
SavedModel itself (``runtime="saved_model"``: its own signatures, TensorFlow's decoders).
Concurrent requests are batched (``Batcher``). Every input is checked before it is queued
(images from their headers, as ``predict`` checks them: a decompression bomb is refused
without decoding), the body size and the queue are bounded, and each bad request gets a
4xx with what was wrong and the fix, while the server goes on serving.

aiohttp is the HTTP stack: a maintained asyncio server whose request-size bound and
graceful shutdown come built in, and on whose event loop concurrent requests can wait
for one batched model call without a thread each.
"""

import asyncio
import json
import os
import re
import signal
import time

import numpy as np

from cmxl_keras import inference
from cmxl_keras.applications import PRESET_DIRS
from cmxl_keras.errors import ConfigError, DataError, RunError
from cmxl_keras.images import decode_image
from cmxl_keras.rest import BadRequest, parse_predict, respond, signature_defs
from cmxl_keras.serving import GIVE_IMAGES

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")


class Served:
    """An exported folder's model as the server runs it: ``images(uint8 batch)`` and
    ``encoded(list of bytes)`` give probabilities [N, C]; ``decode(bytes)`` is what this
    runtime decodes before the model (LiteRT: ``images.decode_image``, as ``predict``)."""

    def __init__(self, model_dir, runtime="tflite"):
        metadata = inference.read_metadata(model_dir)
        self.metadata = metadata
        self.class_names = metadata["class_names"]
        self.size = int(metadata["input"]["shape"][1])
        self.runtime = runtime
        if runtime == "tflite":
            loaded = inference.load(model_dir, "tflite", metadata)
            self.images = lambda batch: loaded(batch)
            self.encoded = None  # decoded here first, then batched with the images
        else:
            import tensorflow as tf

            saved = inference.guarded(model_dir, lambda: tf.saved_model.load(
                os.path.join(model_dir, inference.SAVED_MODEL)))
            default = saved.signatures["serving_default"]
            by_bytes = saved.signatures["serving_bytes"]
            self.images = lambda batch: default(images=tf.constant(batch))[
                "probabilities"].numpy()
            self.encoded = lambda items: by_bytes(image_bytes=tf.constant(items))[
                "probabilities"].numpy()

    def decode(self, data, where):
        try:
            return decode_image(data, where, self.size, fix=GIVE_IMAGES)
        except DataError as error:
            raise BadRequest(str(error)) from None


class Batcher:
    """Joins the requests waiting for one model function into batches: those that arrived
    while the model ran join at once, and the batch waits at most ``wait`` seconds more
    (0 by default: a lone request never waits), up to ``max_batch`` images; then one call
    runs them all in a worker thread (one at a time: a LiteRT interpreter is not
    thread-safe). At most ``max_queue`` images wait; past that a request is refused
    (503) instead of queued without bound."""

    def __init__(self, run, max_batch=64, wait=0.0, max_queue=1024):
        self.run, self.max_batch, self.wait, self.max_queue = run, max_batch, wait, max_queue
        self.pending, self.queued = asyncio.Queue(), 0
        self.task = None

    async def __call__(self, inputs):
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


def make_app(served, name, max_body=8 * 2**20, max_batch=64, wait=0.0, max_queue=1024):
    from aiohttp import web

    images = Batcher(served.images, max_batch, wait, max_queue)
    encoded = Batcher(served.encoded, max_batch, wait, max_queue) if served.encoded else None
    loop_run = asyncio.get_running_loop

    def error(status, message):
        return web.json_response({"error": message}, status=status)

    def model(request):
        asked = request.match_info["name"]
        if asked != name:
            raise BadRequest(f"Servable not found for request: Latest({asked}). This server "
                             f"serves {name!r}: /v1/models/{name}.", status=404)

    async def status(request):
        model(request)
        return web.json_response({"model_version_status": [{
            "version": "1", "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]})

    async def metadata(request):
        model(request)
        return web.json_response({"model_spec": {"name": name, "signature_name": "",
                                                 "version": "1"},
                                  "metadata": {"signature_def": signature_defs(served)}})

    async def predict(request):
        model(request)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(f"the body is larger than {max_body} bytes, the most this server "
                             f"reads (--max-body-mb). Send fewer or smaller images per "
                             f"request.", status=413) from None
        # Parsed and checked (and, on LiteRT, decoded) off the event loop, which goes on
        # reading other requests meanwhile.
        signature, inputs, columnar = await loop_run().run_in_executor(
            None, parse_predict, body, served)
        if signature == "serving_bytes" and encoded is None:  # LiteRT: decoded here
            inputs = await loop_run().run_in_executor(None, lambda: [
                served.decode(data, f"instance {i}") for i, data in enumerate(inputs)])
            signature, inputs = "serving_default", np.stack(inputs)
        batcher = encoded if signature == "serving_bytes" else images
        return web.json_response(respond(await batcher(inputs), columnar))

    @web.middleware
    async def errors(request, handler):
        try:
            return await handler(request)
        except BadRequest as refused:
            return error(refused.status, str(refused))
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as http:  # JSON, as TF Serving
            return error(http.status, f"{request.method} {request.path}: no such route here. "
                                      f"This server answers GET /v1/models/{name}, GET "
                                      f"/v1/models/{name}/metadata and POST "
                                      f"/v1/models/{name}:predict (also under /versions/1).")

    async def page(request):
        with open(PAGE) as f:
            text = f.read().replace("{{MODEL}}", name).replace(
                "{{CLASSES}}", json.dumps(served.class_names))
        return web.Response(text=text, content_type="text/html")

    app = web.Application(client_max_size=max_body, middlewares=[errors])
    for prefix in ("/v1/models/{name}", "/v1/models/{name}/versions/1"):
        app.router.add_get(prefix, status)
        app.router.add_get(prefix + "/metadata", metadata)
        app.router.add_post(prefix + ":predict", predict)
    app.router.add_get("/", page)
    return app


SHIPPED = os.path.join(PRESET_DIRS[0], "cm_vanilla")  # a clone's exported/cm_vanilla


def check_limits(name, port, max_body, max_batch, wait, max_queue):
    """Refuses a limit that cannot work, naming it and the fix."""
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"--name {name!r}: a model name in a URL is letters, digits, "
                          f"'_', '.' and '-'. Give one such as cm_vanilla.")
    for flag, value, least in (("--port", port, 0), ("--max-body-mb", max_body, 1),
                               ("--max-batch", max_batch, 1), ("--max-queue", max_queue, 1),
                               ("--batch-wait-ms", wait, 0)):
        if value < least or (flag == "--port" and value > 65535):
            raise ConfigError(f"{flag} {value}: it must be at least {least}"
                              + (" and at most 65535" if flag == "--port" else "") + ".")
    if max_queue < max_batch:
        raise ConfigError(f"--max-queue {max_queue} is smaller than --max-batch {max_batch}: "
                          f"a full batch could never wait. Raise --max-queue.")


def serve(model_dir=None, host="127.0.0.1", port=8501, runtime="tflite", name=None,
          log=print, max_body=8 * 2**20, max_batch=64, wait=0.0, max_queue=1024):
    """Serves ``model_dir`` (default: the shipped model) until SIGINT or SIGTERM; prints
    where it listens."""
    check_limits(name, port, max_body, max_batch, wait, max_queue)
    if model_dir is None:
        if not os.path.isfile(os.path.join(SHIPPED, "metadata.json")):
            raise RunError(f"no MODEL_DIR given, and the shipped model is not here "
                           f"({SHIPPED}): give an exported folder, made by 'cli.py export'.")
        model_dir = SHIPPED
    if not os.path.isdir(model_dir):
        raise RunError(f"{model_dir!r} does not exist. Give an exported model folder "
                       f"(exported/<name>), made by 'cli.py export'.")
    served = Served(model_dir, runtime)
    name = name or served.metadata.get("config", {}).get("name") or "model"

    async def main():
        from aiohttp import web

        runner = web.AppRunner(make_app(served, name, max_body, max_batch, wait, max_queue),
                               access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as error:
            await runner.cleanup()
            raise RunError(f"cannot listen on {host}:{port} ({error.strerror or error}). "
                           f"Pick a free port with --port (0: any free one).") from None
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        bound = runner.addresses[0]
        url = f"http://{bound[0]}:{bound[1]}"
        log(f"serving {name} ({model_dir}, {runtime}) on {url}/v1/models/{name} ; the page "
            f"on {url}/ ; Ctrl-C stops it")
        started = time.monotonic()
        await stop.wait()
        await runner.cleanup()
        log(f"stopped after {time.monotonic() - started:.0f} s")

    asyncio.run(main())
