"""``cli.py serve`` as an operator runs it, with real HTTP on localhost: every client fault
a 4xx and one log line (never a stack, never a 500), the access log in both formats,
the Prometheus metrics scraped with the client library's own parser after real
traffic, and the drain on SIGTERM with requests in flight."""

import base64
import json
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from test_serve import EXAMPLES, SHIPPED, Server

PREDICT = "/v1/models/cm_vanilla:predict"


def _b64(*paths):
    return {"signature_name": "serving_bytes", "instances": [
        {"b64": base64.b64encode(open(p, "rb").read()).decode()} for p in paths]}


def _raw(server, data, read=True):
    """Sends ``data`` on a new connection; returns the first bytes answered ("" when the
    connection is closed at once without reading)."""
    host, port = server.url[len("http://"):].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        return sock.recv(300).decode(errors="replace") if read else ""


def _hang_up_mid_upload(server):
    host, port = server.url[len("http://"):].split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                 "{\"instances\": [".encode())
    time.sleep(0.3)  # the server is reading the body
    sock.close()


def _access_lines(text):
    return [line for line in text.splitlines() if line.startswith("127.0.0.1 - - [")]


@pytest.mark.slow
def test_client_faults_are_4xx_with_one_line_each_and_the_metrics_count_them():
    server = Server("tflite", "--max-queue", "4", "--max-batch", "4")
    try:
        deep = b"{\"instances\": " + b"[" * 100_000 + b"]" * 100_000 + b"}"
        assert server.predict(deep)[0] == 400
        status, answer = server.predict(_b64(*[EXAMPLES[0]] * 5))
        assert status == 413, answer  # never 503: no retry could serve it
        assert "has 5 images, more than the 4 the server queues" in answer["error"], answer
        for _ in range(3):
            _hang_up_mid_upload(server)
        assert _raw(server, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
                    ).startswith("HTTP/1.0 400")
        assert _raw(server, b"\x16\x03\x01 not http at all\r\n\r\n").startswith("HTTP/1.0 400")
        status, answer = server.predict(_b64(*EXAMPLES[:3]))
        assert status == 200 and len(answer["predictions"]) == 3, answer
        # The page and the metrics, scraped and parsed with prometheus_client's parser.
        with urllib.request.urlopen(server.url + "/", timeout=30) as page:
            assert page.status == 200
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(server.url + "/monitoring/prometheus/metrics",
                                    timeout=30) as scraped:
            families = {f.name: f for f in text_string_to_metric_families(
                scraped.read().decode())}
        counts = {(s.labels["route"], s.labels["status"]): s.value
                  for s in families["cmxl_serve_requests"].samples
                  if s.name == "cmxl_serve_requests_total"}
        assert counts == {("predict", "400"): 1, ("predict", "413"): 1, ("predict", "499"): 3,
                          ("other", "400"): 2, ("predict", "200"): 1, ("page", "200"): 1}, counts
        batches = {s.name: s.value for s in families["cmxl_serve_batch_images"].samples}
        assert batches["cmxl_serve_batch_images_count"] == 1, batches  # one model call
        assert batches["cmxl_serve_batch_images_sum"] == 3, batches
        latency = {s.name: s.value for s in families["cmxl_serve_request_seconds"].samples
                   if s.labels.get("route") == "predict"}
        assert latency["cmxl_serve_request_seconds_count"] == 6, latency
        (queue,) = families["cmxl_serve_queue_images"].samples
        assert queue.value == 0
    finally:
        ended = server.stop()
    log = ended.stderr
    assert ended.returncode == 0, log[-3000:]
    assert "Traceback" not in log and " ERROR " not in log, log[-5000:]
    lines = _access_lines(log)
    statuses = [int(re.search(r'" (\d{3}) ', line).group(1)) for line in lines]
    assert sorted(statuses) == sorted([400, 413, 499, 499, 499, 400, 400, 200, 200, 200]), lines
    assert all(s < 500 for s in statuses)
    # Each client fault is its own single line; the predict line says what it served.
    served = [line for line in lines if f"POST {PREDICT} HTTP/1.1\" 200 " in line]
    assert len(served) == 1 and " images=3 " in served[0] and " ms=" in served[0], served
    gone = [line for line in lines if '" 499 ' in line]
    assert all("the client went away mid-request" in line for line in gone), gone
    assert sum("client fault:" in line for line in log.splitlines()) <= 2, log[-3000:]


@pytest.mark.slow
def test_a_client_gone_before_its_answer_is_a_499_on_one_line():
    # Each batch waits 300 ms for company: the clients hang up while theirs waits.
    server = Server("tflite", "--batch-wait-ms", "300")
    body = json.dumps(_b64(EXAMPLES[0])).encode()
    try:
        for _ in range(2):
            _raw(server, f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: "
                         f"{len(body)}\r\n\r\n".encode() + body, read=False)
        time.sleep(1.0)
        assert server.predict(_b64(EXAMPLES[0]))[0] == 200  # and it serves on
    finally:
        ended = server.stop()
    lines = _access_lines(ended.stderr)
    gone = [line for line in lines if '" 499 ' in line]
    assert len(gone) == 2 and all("went away before its answer" in g for g in gone), lines
    assert "Traceback" not in ended.stderr and len(lines) == 3, ended.stderr[-3000:]


@pytest.mark.slow
def test_the_access_log_as_json_to_a_file(tmp_path):
    path = tmp_path / "access.jsonl"
    server = Server("tflite", "--access-log", str(path), "--access-log-format", "json")
    try:
        assert server.predict(_b64(EXAMPLES[1]))[0] == 200
        assert server.call("/v1/models/resnet")[0] == 404
    finally:
        ended = server.stop()
    assert ended.returncode == 0 and not _access_lines(ended.stderr), ended.stderr[-2000:]
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("POST", PREDICT, 200), ("GET", "/v1/models/resnet", 404)], entries
    first = entries[0]
    assert first["images"] == 1 and first["client"] == "127.0.0.1" and first["ms"] > 0
    assert first["bytes"] > 0 and first["time"].endswith("+00:00"), first
    assert "Servable not found" in entries[1]["error"]


def _post_in_thread(server, body, out):
    def send():
        try:
            out.append(server.predict(body))
        except OSError as error:  # cut off without an answer
            out.append((None, repr(error)))

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.slow
def test_sigterm_drains_the_requests_in_flight_and_refuses_new_ones_with_retry_after():
    # Each batch waits 2 s for company, so the requests sent below are in flight (accepted,
    # waiting in the batcher) when the signal lands.
    server = Server("tflite", "--batch-wait-ms", "2000", "--drain-seconds", "20")
    answers = []
    threads = [_post_in_thread(server, _b64(path), answers) for path in EXAMPLES[:3]]
    time.sleep(0.8)
    started = time.monotonic()
    server.child.proc.send_signal(signal.SIGTERM)
    server.child.wait_until(lambda: "stopping: answering the 3 request(s)" in
                            server.child.stderr, 30, "the drain starting")
    request = urllib.request.Request(server.url + PREDICT,
                                     data=json.dumps(_b64(EXAMPLES[3])).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "1"
    assert "the server is stopping" in json.load(refused.value)["error"]
    for thread in threads:
        thread.join(60)
    ended = server.child.wait(60)
    assert ended.returncode == 0, ended.stderr[-3000:]
    assert time.monotonic() - started < 20
    assert sorted(status for status, _ in answers) == [200, 200, 200], answers
    assert "Traceback" not in ended.stderr and "stopped after" in ended.stderr


@pytest.mark.slow
def test_the_drain_is_bounded_by_drain_seconds():
    server = Server("tflite", "--batch-wait-ms", "30000", "--drain-seconds", "1")
    answers = []
    thread = _post_in_thread(server, _b64(EXAMPLES[0]), answers)
    time.sleep(1.0)
    started = time.monotonic()
    server.child.proc.send_signal(signal.SIGTERM)
    ended = server.child.wait(30)
    assert ended.returncode == 0 and time.monotonic() - started < 10, ended.stderr[-3000:]
    assert "1 request(s) still in flight after 1 s (--drain-seconds) are cut off" in \
        ended.stderr, ended.stderr[-3000:]
    assert "Traceback" not in ended.stderr, ended.stderr[-3000:]
    thread.join(30)
    assert answers and answers[0][0] is None, answers  # cut off: no status came


@pytest.mark.slow
def test_the_int8_file_is_served_and_predicted_as_litert_runs_it():
    """``serve --runtime tflite_int8`` and ``predict --format tflite_int8`` answer what the
    int8 file gives in process, on the images as predict decodes them."""
    import numpy as np

    from cmxl_keras import inference, serving
    from conftest import run_cli

    expected = inference.load(SHIPPED, "tflite_int8")(serving.load_images(EXAMPLES, 32))
    assert inference.load(SHIPPED, "tflite_int8").path.endswith("model_int8.tflite")
    server = Server("tflite_int8")
    try:
        status, answer = server.predict(_b64(*EXAMPLES))
    finally:
        ended = server.stop()
    assert status == 200 and ended.returncode == 0, (status, ended.stderr[-2000:])
    got = np.array([p["probabilities"] for p in answer["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    predicted = run_cli("predict", *EXAMPLES, "--model", SHIPPED, "--format", "tflite_int8",
                        "--json", "--top-k", "1", timeout=120)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    top = [item["top_k"][0]["probability"] for item in json.loads(predicted.stdout)]
    np.testing.assert_allclose(top, expected.max(1), atol=1e-6)


def test_a_server_fault_is_a_500_logged_once_with_its_stack(caplog):
    """In this process, over real HTTP on localhost (aiohttp's test server): a model that
    fails (the server's fault, not the client's) answers 500 in JSON and logs its stack
    once; the next request is served."""
    import asyncio
    import logging

    import numpy as np
    from aiohttp.test_utils import TestClient, TestServer

    from cmxl_keras import server as server_lib

    class Failing:
        class_names, size, encoded = [str(i) for i in range(10)], 32, None
        calls = 0

        def images(self, batch):
            Failing.calls += 1
            if Failing.calls == 1:
                raise MemoryError("the model ran out of memory")
            return np.full((len(batch), 10), 0.1, np.float32)

    async def run():
        app = server_lib.make_app(Failing(), "m")
        async with TestClient(TestServer(app)) as client:
            body = {"instances": [[[[0, 0, 0]] * 32] * 32]}
            first = await client.post("/v1/models/m:predict", json=body)
            second = await client.post("/v1/models/m:predict", json=body)
            return first.status, await first.json(), second.status

    with caplog.at_level(logging.INFO, logger="cmxl.serve"):
        status, answer, after = asyncio.run(run())
    assert status == 500 and "MemoryError" in answer["error"], answer
    assert after == 200
    faults = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(faults) == 1 and faults[0].exc_info[0] is MemoryError, caplog.records
