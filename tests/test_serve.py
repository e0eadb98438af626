"""``cli.py serve``: the shipped model behind TensorFlow Serving's REST API, for real: a
server process on localhost, requests over HTTP as a TensorFlow Serving client sends them
(``serving.rest_request`` builds them), answers compared with the SavedModel's own
signatures, every kind of bad request refused with a 4xx while the server goes on, the
page driven in a real headless Chromium, and a clean stop on SIGTERM."""

import asyncio
import base64
import glob
import json
import os
import re
import shutil
import signal
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import ROOT, Child, png_bomb, run_cli

SHIPPED = os.path.join(ROOT, "exported", "cm_vanilla")
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "docs", "examples", "*.png")))


class Server:
    def __init__(self, runtime, *flags):
        self.child = Child([sys.executable, os.path.join(ROOT, "cli.py"), "serve", SHIPPED,
                            "--port", "0", "--runtime", runtime, *flags])
        self.child.wait_until(lambda: "serving cm_vanilla" in self.child.stderr, 120,
                              "the server listening")
        self.url = re.search(r"on (http://[0-9.]+:\d+)/v1", self.child.stderr).group(1)

    def call(self, path, body=None, timeout=60):
        """(status, JSON answer) of GET ``path``, or of POST ``body`` (bytes or JSON)."""
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def predict(self, body):
        return self.call("/v1/models/cm_vanilla:predict", body)

    def stop(self, sig=signal.SIGTERM):
        self.child.proc.send_signal(sig)
        return self.child.wait(60)


@pytest.fixture(scope="module", params=["tflite", "saved_model"])
def server(request):
    served = Server(request.param, "--max-body-mb", "1")
    yield served
    ended = served.stop()
    assert ended.returncode == 0 and "stopped after" in ended.stderr, ended.stderr[-2000:]


@pytest.fixture(scope="module")
def saved_model():
    import tensorflow as tf

    return tf.saved_model.load(os.path.join(SHIPPED, "saved_model", "1"))


def _pixels(paths):
    from cmxl_keras import serving

    return serving.load_images(paths, 32)  # as predict decodes them


def test_a_tf_serving_client_gets_the_savedmodels_own_answers(server, saved_model):
    """The same request to the server and to the SavedModel's own signatures: the
    encoded images (``serving_bytes``, as ``serving.rest_request`` sends them), and uint8
    pixels in row and in columnar format (``serving_default``)."""
    import tensorflow as tf

    from cmxl_keras import serving

    # LiteRT's float32 file against the SavedModel: 1.6e-5 on 1,000 images (the export's
    # parity); the SavedModel runtime is the SavedModel itself.
    tolerance = 1e-4 if "tflite" in server.child.command else 0
    data = [open(p, "rb").read() for p in EXAMPLES]
    status, answer = server.predict(serving.rest_request(EXAMPLES))
    assert status == 200, answer
    own = saved_model.signatures["serving_bytes"](image_bytes=tf.constant(data))
    got = np.array([row["probabilities"] for row in answer["predictions"]])
    np.testing.assert_allclose(got, own["probabilities"].numpy(), atol=tolerance)
    assert [row["class_id"] for row in answer["predictions"]] == own["class_id"].numpy().tolist()
    # ... and the project's own TF-Serving client reads the answer: each example's class.
    results = serving.results_from_rest(answer, json.load(open(os.path.join(
        SHIPPED, "metadata.json")))["class_names"], EXAMPLES, 1)
    assert [r["top_k"][0]["class"] for r in results] == [
        os.path.basename(p)[:-4] for p in EXAMPLES]

    pixels = _pixels(EXAMPLES)
    own = saved_model.signatures["serving_default"](images=tf.constant(pixels))
    rows = server.predict({"instances": [{"images": p.tolist()} for p in pixels]})
    bare = server.predict({"instances": pixels.tolist()})
    columns = server.predict({"signature_name": "serving_default",
                              "inputs": {"images": pixels.tolist()}})
    assert rows[0] == bare[0] == columns[0] == 200, (rows, columns)
    assert rows[1] == bare[1]
    np.testing.assert_allclose([r["probabilities"] for r in rows[1]["predictions"]],
                               own["probabilities"].numpy(), atol=tolerance)
    np.testing.assert_allclose(columns[1]["outputs"]["probabilities"],
                               own["probabilities"].numpy(), atol=tolerance)
    assert columns[1]["outputs"]["class_id"] == own["class_id"].numpy().tolist()


def test_status_and_metadata_are_tf_servings(server):
    status, answer = server.call("/v1/models/cm_vanilla")
    assert status == 200
    assert answer == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    assert server.call("/v1/models/cm_vanilla/versions/1")[1] == answer
    status, meta = server.call("/v1/models/cm_vanilla/metadata")
    assert status == 200 and meta["model_spec"]["name"] == "cm_vanilla"
    defs = meta["metadata"]["signature_def"]["signature_def"]
    assert defs["serving_default"]["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert [d["size"] for d in defs["serving_default"]["inputs"]["images"]["tensor_shape"][
        "dim"]] == ["-1", "32", "32", "3"]
    assert defs["serving_bytes"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert set(defs["serving_bytes"]["outputs"]) == {"probabilities", "class_id"}


def _b64(data):
    return {"signature_name": "serving_bytes",
            "instances": [{"b64": base64.b64encode(data).decode()}]}


BAD = [  # (body, status, what the message says)
    (b"{\"instances\": [", 400, "the body is not JSON"),
    (b"[1, 2]", 400, "the body is a JSON list, not an object"),
    ({"signature_name": "serving_float", "instances": [[0]]}, 400,
     "'serving_float' not found in signature def"),
    ({"instances": [[0]], "inputs": [[0]]}, 400, "exactly one of \"instances\""),
    ({"instances": []}, 400, "must be a non-empty list"),
    ({"instances": [[[[0, 0, 0]] * 31] * 32]}, 400, "[N, 32, 32, 3]; got shape [1, 32, 31, 3]"),
    ({"instances": [[[[0, 0]] * 32] * 32, [[[0, 0, 0]] * 32] * 32]}, 400, "got shape ragged"),
    ({"instances": [[[[0.5, 0, 0]] * 32] * 32]}, 400, "whole numbers 0 to 255; got float64"),
    ({"instances": [[[["a", 0, 0]] * 32] * 32]}, 400, "whole numbers 0 to 255"),
    ({"instances": [[[[300, 0, 0]] * 32] * 32]}, 400, "got values from 0 to 300"),
    ({"inputs": {"pixels": [[0]]}}, 400, "takes one input, 'images'"),
    ({"signature_name": "serving_bytes", "instances": [{"b64": "%%%"}]}, 400,
     "its \"b64\" is not base64"),
    ({"signature_name": "serving_bytes", "instances": ["abc"]}, 400,
     "as {\"b64\": \"<base64"),
    (_b64(b"plain text, no image"), 400, "not a readable image"),
    (_b64(png_bomb(20000, 20000)), 400, "declares more than 40 megapixels"),
    (b"{\"instances\": [" + b"0, " * 400_000 + b"0]}", 413, "larger than 1048576 bytes"),
]


@pytest.mark.parametrize("body,status,message", BAD, ids=[
    "malformed", "list", "signature", "both", "empty", "shape", "ragged", "fraction", "text",
    "range", "input-name", "base64", "no-b64", "not-an-image", "bomb", "oversize"])
def test_a_bad_request_gets_a_4xx_with_the_fix_and_the_next_is_served(server, body, status,
                                                                     message):
    got, answer = server.predict(body)
    assert got == status and message in answer["error"], (got, answer)
    good = server.predict(_b64(open(EXAMPLES[0], "rb").read()))
    assert good[0] == 200 and good[1]["predictions"][0]["class_id"] == 0, good


def test_another_model_name_or_route_is_not_found_in_json(server):
    status, answer = server.call("/v1/models/resnet")
    assert status == 404 and "Servable not found for request: Latest(resnet)" in answer["error"]
    for path, body, code in (("/v1/models/cm_vanilla/versions/2", None, 404),
                             ("/v1/models/cm_vanilla:classify", {"examples": []}, 405),
                             ("/v2/models", None, 404)):
        status, answer = server.call(path, body)
        assert status == code and "no such route here" in answer["error"], (path, answer)
        assert "POST /v1/models/cm_vanilla:predict" in answer["error"]


def test_the_batcher_joins_concurrent_requests_and_bounds_its_queue():
    """In this process, on the shipped TFLite model: five single-image requests that
    arrive together run as one model call, each answered with its own image's result; a
    request past the queue's bound, while the model is busy, is refused with 503."""
    from cmxl_keras import inference, rest, server as server_lib

    model = inference.load(SHIPPED, "tflite")
    pixels = _pixels(EXAMPLES)
    alone = model(pixels)
    calls, release = [], threading.Event()

    def run(batch):
        calls.append(len(batch))
        release.wait(30)
        return model(batch)

    async def joined():
        batcher = server_lib.Batcher(run, max_batch=8, wait=0.2, max_queue=8)
        release.set()
        return await asyncio.gather(*(batcher(pixels[i:i + 1]) for i in range(len(pixels))))

    out = asyncio.run(joined())
    assert calls == [len(pixels)], calls
    np.testing.assert_allclose(np.concatenate(out), alone, atol=1e-6)

    async def bounded():
        release.clear()
        calls.clear()
        batcher = server_lib.Batcher(run, max_batch=1, wait=0, max_queue=2)
        first = asyncio.ensure_future(batcher(pixels[:1]))
        while not calls:  # the first request is in the model, which waits
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher(pixels[1:2]))
        await asyncio.sleep(0.05)
        with pytest.raises(rest.BadRequest, match="busy: 2 images are waiting, and it "
                                                  "queues at most 2") as refused:
            await batcher(pixels[2:3])
        release.set()
        return refused.value.status, await first, await second

    status, first, second = asyncio.run(bounded())
    assert status == 503
    np.testing.assert_allclose(np.concatenate([first, second]), alone[:2], atol=1e-6)


def _corrupt_png():
    """cat.png with 20 bytes of its compressed pixels zeroed: its header is whole (it
    passes the header check), its pixels do not decode."""
    data = open(EXAMPLES[1], "rb").read()
    return data[:60] + bytes(20) + data[80:]


def test_an_image_that_does_not_decode_is_refused_alone(server):
    got, answer = server.predict(_b64(_corrupt_png()))
    assert got == 400, answer
    assert ("Invalid PNG data" in answer["error"] if "saved_model" in server.child.command
            else "not a readable image" in answer["error"]), answer


def test_a_refused_request_in_a_batch_does_not_fail_the_others(saved_model):
    """In this process, on the SavedModel's own ``serving_bytes``: three requests that
    arrive together form one batch, which TensorFlow refuses for the middle one's
    pixels; each is then run alone, the two good ones answered as alone, the bad one
    refused with TensorFlow's reason (400)."""
    import tensorflow as tf

    from cmxl_keras import rest, server as server_lib

    calls = []

    def run(items):
        calls.append(len(items))
        return saved_model.signatures["serving_bytes"](image_bytes=tf.constant(items))[
            "probabilities"].numpy()

    good = [open(p, "rb").read() for p in EXAMPLES[:2]]
    alone = run(good)
    calls.clear()

    async def together():
        batcher = server_lib.Batcher(run, max_batch=8, wait=0.2, max_queue=8)
        return await asyncio.gather(batcher([good[0]]), batcher([_corrupt_png()]),
                                    batcher([good[1]]), return_exceptions=True)

    first, refused, second = asyncio.run(together())
    assert calls == [3, 1, 1, 1], calls  # one batch, refused; then each request alone
    assert isinstance(refused, rest.BadRequest) and refused.status == 400, refused
    assert str(refused).startswith("the model refused this request: Invalid PNG data")
    np.testing.assert_allclose(np.concatenate([first, second]), alone, atol=1e-6)


@pytest.mark.parametrize("flags,message", [
    (["--max-batch", "0"], "--max-batch 0: it must be at least 1"),
    (["--max-queue", "4"], "--max-queue 4 is smaller than --max-batch 64"),
    (["--name", "a/b"], "--name 'a/b': a model name in a URL"),
    (["--port", "70000"], "--port 70000: it must be at least 0 and at most 65535"),
    ([os.path.join(ROOT, "configs")], "is not an exported model folder (no metadata.json)"),
])
def test_bad_serve_flags_are_refused_before_listening(flags, message):
    result = run_cli("serve", *flags, timeout=120)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]


def test_a_port_in_use_is_refused_with_the_fix(server):
    port = server.url.rsplit(":", 1)[1]
    result = run_cli("serve", SHIPPED, "--port", port, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Pick a free port with --port" in result.stderr


def _chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, ("the browser test needs Debian's chromium (apt-get install chromium); "
                   ".ci/run installs it")
    return found


def test_the_page_classifies_an_uploaded_image_in_a_real_browser(tmp_path):
    """Headless Chromium, driven over its DevTools protocol: the page at / is loaded, a
    real image file is set on its file input as a user picking it would, and the page
    shows the class the model gives; then a file that is no image, and the page shows
    the server's refusal."""
    served = Server("tflite")
    try:
        not_image = tmp_path / "notes.png"
        not_image.write_bytes(b"these are notes, not an image")
        shown = asyncio.run(_drive(served.url, [EXAMPLES[1], str(not_image)], tmp_path))
    finally:
        ended = served.stop(signal.SIGINT)  # Ctrl-C
    assert ended.returncode == 0 and "stopped after" in ended.stderr, ended.stderr[-2000:]
    guess, refused = shown
    assert guess["status"].startswith("cat.png: answered in"), guess
    assert guess["rows"][0][0] == "cat" and guess["rows"][0][1].endswith(" %"), guess
    assert len(guess["rows"]) == 5 and not guess["error"], guess
    assert refused["status"] == "notes.png: refused (400)", refused
    assert "not a readable image" in refused["error"] and not refused["rows"], refused


async def _drive(url, files, tmp_path):
    browser = await asyncio.create_subprocess_exec(
        _chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
        "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}",
        "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        return await asyncio.wait_for(_session(url, files, tmp_path), 120)
    finally:
        browser.terminate()
        await asyncio.wait_for(browser.wait(), 30)


async def _session(url, files, tmp_path):
    import aiohttp

    port_file = tmp_path / "profile" / "DevToolsActivePort"
    while not port_file.exists() or not port_file.read_text().strip():
        await asyncio.sleep(0.1)
    port = port_file.read_text().split()[0]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as listing:
            page = [t for t in await listing.json() if t["type"] == "page"][0]
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 10_000))

            async def send(method, **params):
                number = next(ids)
                await ws.send_json({"id": number, "method": method, "params": params})
                while True:
                    message = await ws.receive_json()
                    if message.get("id") == number:
                        assert "error" not in message, message
                        return message.get("result", {})

            async def evaluate(expression):
                result = await send("Runtime.evaluate", expression=expression,
                                    returnByValue=True)
                return result["result"].get("value")

            await send("Page.enable")
            await send("Page.navigate", url=url + "/")
            while await evaluate("document.readyState") != "complete" or \
                    await evaluate("document.getElementById('file') === null"):
                await asyncio.sleep(0.1)
            shown = []
            for path in files:
                document = await send("DOM.getDocument")
                node = await send("DOM.querySelector", nodeId=document["root"]["nodeId"],
                                  selector="#file")
                await send("DOM.setFileInputFiles", files=[path], nodeId=node["nodeId"])
                name = os.path.basename(path)
                while not (await evaluate("document.getElementById('status').textContent")
                           or "").startswith(name + ": "):
                    await asyncio.sleep(0.1)
                shown.append(await evaluate(
                    "({status: document.getElementById('status').textContent,"
                    " error: document.getElementById('error').textContent,"
                    " rows: [...document.querySelectorAll('#results tr')].map("
                    "r => [...r.cells].slice(0, 2).map(c => c.textContent))})"))
            return shown


def test_webp_is_read_through_serving_bytes_as_predict_reads_it(server, tmp_path):
    """WebP, which the SavedModel's own serving_bytes refuses, is decoded as predict
    decodes it, on either runtime."""
    from PIL import Image

    from cmxl_keras import serving

    path = tmp_path / "cat.webp"
    Image.open(EXAMPLES[1]).convert("RGB").save(path, "WEBP", lossless=True)
    status, answer = server.predict(_b64(path.read_bytes()))
    assert status == 200, answer
    (expected,) = serving.predict_files([str(path)], SHIPPED, k=1, fmt="tflite")
    got = answer["predictions"][0]
    assert got["class_id"] == 3 and expected["top_k"][0]["class"] == "cat"
    assert got["probabilities"][3] == pytest.approx(expected["top_k"][0]["probability"],
                                                    abs=1e-4)
