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
4xx with what was wrong and the fix, while the server goes on serving; a client that
hangs up is logged as its fault, on one line; the server's own faults are a 500 with
their stack logged once. On SIGTERM it drains: the requests accepted are answered, new
ones get 503 with Retry-After. The access log and the metrics are ``serve_ops``'.

aiohttp is the HTTP stack: a maintained asyncio server whose request-size bound and
graceful shutdown come built in, and on whose event loop concurrent requests can wait
for one batched model call without a thread each.
"""

import asyncio
import json
import logging
import os
import re
import signal
import time

import numpy as np

from cmxl_keras import inference
from cmxl_keras.applications import PRESET_DIRS
from cmxl_keras.batching import Batcher
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
        if runtime in inference.TFLITE_FILES or runtime == "onnx":  # LiteRT, ONNX Runtime
            loaded = inference.load(model_dir, runtime, metadata)
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


def make_app(served, name, max_body=8 * 2**20, max_batch=64, wait=0.0, max_queue=1024):
    """The aiohttp application: TensorFlow Serving's routes, the page, the metrics; every
    refusal a JSON error with its status; while ``app["draining"]`` (after SIGTERM), new
    requests get 503 with Retry-After and those already accepted are answered."""
    from aiohttp import web

    from cmxl_keras import serve_ops

    metrics = serve_ops.AccessLog.metrics = serve_ops.Metrics(name)  # one server a process
    images = Batcher(served.images, max_batch, wait, max_queue, metrics.model_call)
    encoded = (Batcher(served.encoded, max_batch, wait, max_queue, metrics.model_call)
               if served.encoded else None)
    loop_run = asyncio.get_running_loop
    log = logging.getLogger("cmxl.serve")

    def error(status, message, **headers):
        return web.json_response({"error": message}, status=status, headers=headers)

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
        request["images"] = len(inputs)
        # LiteRT: decoded here. The SavedModel's serving_bytes decodes JPEG, PNG, GIF and
        # BMP (and refuses WebP, as TensorFlow Serving would): a request holding WebP is
        # decoded here, as predict decodes it, and runs through serving_default.
        if signature == "serving_bytes" and (encoded is None or any(map(_webp, inputs))):
            inputs = await loop_run().run_in_executor(None, lambda: [
                served.decode(data, f"instance {i}") for i, data in enumerate(inputs)])
            signature, inputs = "serving_default", np.stack(inputs)
        batcher = encoded if signature == "serving_bytes" else images
        return web.json_response(respond(await batcher(inputs), columnar))

    async def prometheus(request):
        from prometheus_client import CONTENT_TYPE_LATEST

        queued = images.queued + (encoded.queued if encoded else 0)
        return web.Response(body=metrics.text(queued),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    @web.middleware
    async def errors(request, handler):
        if request.app["draining"]:
            request["error"] = "draining: the server is stopping"
            return error(503, "the server is stopping (SIGTERM) and takes no new requests; "
                              "retry in a moment, on this address once it is back or on "
                              "another replica.", **{"Retry-After": "1"})
        request.app["in_flight"] += 1
        try:
            response = await handler(request)
            if request.transport is None or request.transport.is_closing():
                request["error"] = "the client went away before its answer"
                return error(CLIENT_GONE, request["error"])  # logged; nobody reads it
            return response
        except BadRequest as refused:
            request["error"] = str(refused)
            return error(refused.status, str(refused))
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as http:  # JSON, as TF Serving
            request["error"] = "no such route"
            return error(http.status, f"{request.method} {request.path}: no such route here. "
                                      f"This server answers GET /v1/models/{name}, GET "
                                      f"/v1/models/{name}/metadata and POST "
                                      f"/v1/models/{name}:predict (also under /versions/1), "
                                      f"and GET {serve_ops.METRICS_PATH}.")
        except serve_ops.CLIENT_FAULTS as gone:  # the client hung up mid-request
            request["error"] = f"the client went away mid-request ({gone or 'cancelled'})"
            return error(CLIENT_GONE, request["error"])  # logged; nobody reads it
        except Exception as failure:  # the server's own fault: its stack, once
            log.exception("server fault on %s %s", request.method, request.path)
            request["error"] = f"{type(failure).__name__}: {failure}"
            return error(500, f"the server failed on this request ({type(failure).__name__}: "
                              f"{str(failure)[:300]}); it is logged. Retrying may not help.")
        finally:
            request.app["in_flight"] -= 1

    async def page(request):
        with open(PAGE) as f:
            text = f.read().replace("{{MODEL}}", name).replace(
                "{{CLASSES}}", json.dumps(served.class_names))
        return web.Response(text=text, content_type="text/html")

    app = web.Application(client_max_size=max_body, middlewares=[errors])
    app["draining"], app["in_flight"], app["metrics"] = False, 0, metrics
    for version, prefix in (("", "/v1/models/{name}"), ("-v1", "/v1/models/{name}/versions/1")):
        app.router.add_get(prefix, status, name="status" + version)
        app.router.add_get(prefix + "/metadata", metadata, name="metadata" + version)
        app.router.add_post(prefix + ":predict", predict, name="predict" + version)
    app.router.add_get("/", page, name="page")
    app.router.add_get(serve_ops.METRICS_PATH, prometheus, name="metrics")
    return app


def _webp(data):
    """Whether ``data`` is a WebP file (a RIFF container of kind WEBP)."""
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


# The status a request is logged and counted with when its client hung up before the
# answer (nginx's "client closed request"): a client's fault, not the server's 500.
CLIENT_GONE = 499
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
          log=print, max_body=8 * 2**20, max_batch=64, wait=0.0, max_queue=1024,
          access_log="-", access_log_format="common", drain_seconds=30.0):
    """Serves ``model_dir`` (default: the shipped model) until SIGINT or SIGTERM; prints
    where it listens. ``access_log``: "-" (stderr), a file, or "off"; on a signal, the
    requests accepted are answered for up to ``drain_seconds`` while new ones get 503."""
    from cmxl_keras import serve_ops

    check_limits(name, port, max_body, max_batch, wait, max_queue)
    if drain_seconds < 0:
        raise ConfigError(f"--drain-seconds {drain_seconds}: it must be at least 0 (0 stops "
                          f"at once, cutting off the requests in flight).")
    if access_log_format not in serve_ops.FORMATS:
        raise ConfigError(f"--access-log-format {access_log_format!r}: choose "
                          f"{' or '.join(serve_ops.FORMATS)}.")
    if model_dir is None:
        if not os.path.isfile(os.path.join(SHIPPED, "metadata.json")):
            raise RunError(f"no MODEL_DIR given, and the shipped model is not here "
                           f"({SHIPPED}): give an exported folder, made by 'cli.py export'.")
        model_dir = SHIPPED
    if not os.path.isdir(model_dir):
        raise RunError(f"{model_dir!r} does not exist. Give an exported model folder "
                       f"(exported/<name>), made by 'cli.py export'.")
    try:
        access = serve_ops.access_logger(access_log)
    except OSError as failure:
        raise ConfigError(f"--access-log {access_log!r} cannot be opened for appending "
                          f"({failure.strerror or failure}). Give a writable file, - for "
                          f"stderr, or off.") from None
    serve_ops.server_logging()
    served = Served(model_dir, runtime)
    name = name or served.metadata.get("config", {}).get("name") or "model"

    async def main():
        from aiohttp import web

        app = make_app(served, name, max_body, max_batch, wait, max_queue)
        # The drain (``drain``) waits for the requests in flight; what is left after it is
        # cut off at once (aiohttp's own wait for handlers would be another 60 s).
        runner = web.AppRunner(app, access_log=access, access_log_class=serve_ops.AccessLog,
                               access_log_format=access_log_format, handle_signals=False,
                               shutdown_timeout=0.1)
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
            f"on {url}/ ; metrics on {url}{serve_ops.METRICS_PATH} ; Ctrl-C stops it")
        started = time.monotonic()
        await stop.wait()
        await drain(app, drain_seconds, log)
        await runner.cleanup()
        log(f"stopped after {time.monotonic() - started:.0f} s")

    asyncio.run(main())


async def drain(app, seconds, log):
    """After a stop signal: new requests are refused (503, Retry-After) while those
    already accepted finish, for at most ``seconds``."""
    app["draining"] = True
    deadline = time.monotonic() + seconds
    if app["in_flight"]:
        log(f"stopping: answering the {app['in_flight']} request(s) in flight (at most "
            f"{seconds:g} s; new ones get 503)")
    while app["in_flight"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if app["in_flight"]:
        log(f"stopping: {app['in_flight']} request(s) still in flight after {seconds:g} s "
            f"(--drain-seconds) are cut off")
