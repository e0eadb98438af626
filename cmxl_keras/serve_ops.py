"""What ``cli.py serve`` tells its operator: one access-log line per request (the common
log format, or JSON), one line for each client fault and a stack only for the server's
own faults, and Prometheus metrics at TensorFlow Serving's path.

The access log is aiohttp's own extension point (``AbstractAccessLogger``), so its lines
come from the HTTP stack for every answer, refusals included. The metrics are the
Prometheus client library's (counters, a latency histogram, images per model call, the
queue's depth), exposed in its text format by its own ``generate_latest``.
"""

import asyncio
import datetime
import json
import logging
import sys

from aiohttp import http_exceptions
from aiohttp.abc import AbstractAccessLogger

FORMATS = ("common", "json")
METRICS_PATH = "/monitoring/prometheus/metrics"  # TensorFlow Serving's
# The routes that label the metrics (a bounded set: never the raw path).
ROUTES = ("predict", "status", "metadata", "page", "metrics")

# What a client does to a server that is no fault of the server: it hangs up, or sends
# something that is not HTTP. aiohttp logs these with a stack; here they are one line.
CLIENT_FAULTS = (ConnectionError, asyncio.CancelledError, http_exceptions.HttpProcessingError)


def route_of(request):
    """The route a request matched, by name (``ROUTES``), or "other"."""
    try:
        name = (request.match_info.route.name or "").split("-")[0]
    except (AttributeError, AssertionError):  # no route: the HTTP itself was bad
        return "other"
    return name if name in ROUTES else "other"  # "-v1": the same route under /versions/1


class AccessLog(AbstractAccessLogger):
    """One line per answered request: time, client, method, path, status, images, bytes
    and milliseconds (and the error, for a refusal), in the common log format with those
    fields after it, or as one JSON object (``log_format`` "json"). It also counts each
    answer in the server's metrics (``metrics``, set by ``server.make_app``: aiohttp
    makes this logger, and a request that is not valid HTTP reaches no application), so
    they count whatever the log shows."""

    metrics = None

    def log(self, request, response, time):
        if self.metrics is not None:
            self.metrics.answered(request, response.status, time)
        if not self.logger.handlers:  # --access-log off
            return
        when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=time)
        fields = {"time": when.isoformat(timespec="milliseconds"), "client": request.remote,
                  "method": request.method, "path": request.path_qs,
                  "status": response.status, "images": request.get("images", 0),
                  "bytes": response.body_length, "ms": round(time * 1000, 1)}
        if request.get("error"):
            fields["error"] = request["error"]
        if self.log_format == "json":
            self.logger.info(json.dumps(fields))
            return
        version = f"HTTP/{request.version.major}.{request.version.minor}"
        line = (f"{fields['client']} - - [{when.strftime('%d/%b/%Y:%H:%M:%S %z')}] "
                f"\"{fields['method']} {fields['path']} {version}\" {fields['status']} "
                f"{fields['bytes']} images={fields['images']} ms={fields['ms']}")
        if "error" in fields:
            line += " error=" + json.dumps(fields["error"][:300])
        self.logger.info(line)


def access_logger(where):
    """The access log's logger: to stderr ("-"), a file (appended), or nowhere ("off")."""
    logger = logging.getLogger("cmxl.serve.access")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if where == "-":
        logger.addHandler(logging.StreamHandler(sys.stderr))
    elif where != "off":
        logger.addHandler(logging.FileHandler(where))
    return logger


class OneLineClientFaults(logging.Filter):
    """aiohttp logs a client that hangs up mid-request, or a request that is not HTTP,
    with a stack, as if the server had failed: here they become one line naming the
    client's fault; every other record (the server's own faults) keeps its stack."""

    def filter(self, record):
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, CLIENT_FAULTS):
            what = ("sent a request that is not valid HTTP" if isinstance(
                error, http_exceptions.HttpProcessingError) else "went away mid-request")
            reason = " ".join((getattr(error, "message", None) or str(error)
                               or type(error).__name__).split())  # aiohttp's spans lines
            record.msg = f"client fault: {record.getMessage()} {what} ({reason})"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelname, record.levelno = "INFO", logging.INFO
        return True


def server_logging():
    """The server's log on stderr: aiohttp's loggers and the server's own, time-stamped,
    client faults on one line (``OneLineClientFaults``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(OneLineClientFaults())
    for name in ("aiohttp.server", "aiohttp.web", "cmxl.serve"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
    return logging.getLogger("cmxl.serve")


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self, model):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.model = model
        self.registry = CollectorRegistry()
        self.requests = Counter("cmxl_serve_requests", "Requests answered, by route and "
                                "HTTP status.", ["model", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("cmxl_serve_request_seconds", "Time to answer a request, "
                                 "by route.", ["model", "route"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch = Histogram("cmxl_serve_batch_images", "Images per model call (the "
                               "batcher's batches).", ["model"], registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.queue = Gauge("cmxl_serve_queue_images", "Images waiting for the model.",
                           ["model"], registry=self.registry)
        self.images = Counter("cmxl_serve_images", "Images classified.", ["model"],
                              registry=self.registry)

    def answered(self, request, status, seconds):
        route = route_of(request)
        self.requests.labels(self.model, route, str(status)).inc()
        self.latency.labels(self.model, route).observe(seconds)

    def model_call(self, images):
        self.batch.labels(self.model).observe(images)
        self.images.labels(self.model).inc(images)

    def text(self, queued):
        """The metrics in Prometheus' text format (``queued``: images waiting now)."""
        from prometheus_client import generate_latest

        self.queue.labels(self.model).set(queued)
        return generate_latest(self.registry)
