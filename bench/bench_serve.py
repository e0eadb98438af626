#!/usr/bin/env python3
"""``cli.py serve`` under load on localhost: throughput and latency for 1, 8 and 64
concurrent clients, with and without batching, against the model called in this process.

    python bench/bench_serve.py [MODEL_DIR] [--requests 512] [--clients 1,8,64]
                                [--runtime tflite,tflite_int8]

Each client sends one image per request, as a TensorFlow Serving client sends uint8
pixels (``{"instances": [...]}``, ``serving_default``), back to back, until ``--requests``
have been answered; the images are the first of ``docs/examples/`` repeated. The server
runs in a child process, once batching concurrent requests (``--max-batch 64``, its
default) and once not (``--max-batch 1``), both with the access log off, and once batched
with the access log on (to a file): its cost, as a ratio. In-process, the same model (the same runtime)
is called one image at a time, and 64 at a time. Reported per form and client count:
images/s, p50 and p99 latency in ms, and images/s over the in-process one-at-a-time
figure. The last lines are machine-readable.
"""

import argparse
import asyncio
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def image():
    from cmxl_keras import serving

    path = sorted(glob.glob(os.path.join(ROOT, "docs", "examples", "*.png")))[0]
    return serving.load_images([path], 32)[0]


def in_process(model_dir, runtime, pixels, requests):
    from cmxl_keras import inference

    model = inference.load(model_dir, None if runtime == "saved_model" else runtime)
    one = pixels[None]
    model(one)
    start = time.perf_counter()
    for _ in range(requests):
        model(one)
    single = requests / (time.perf_counter() - start)
    batch = np.repeat(one, 64, axis=0)
    model(batch)
    start = time.perf_counter()
    for _ in range(max(1, requests // 64)):
        model(batch)
    batched = max(1, requests // 64) * 64 / (time.perf_counter() - start)
    return single, batched


async def load(url, body, clients, requests):
    import aiohttp

    latencies, left = [], [requests]

    async def client(session):
        while left[0] > 0:
            left[0] -= 1
            start = time.perf_counter()
            async with session.post(url, data=body,
                                    headers={"Content-Type": "application/json"}) as answer:
                await answer.read()
                if answer.status != 200:
                    raise SystemExit(f"the server answered {answer.status}")
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(min(clients, 4))))  # warm-up
        latencies.clear()
        left[0] = requests
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return requests / seconds, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def serving(model_dir, runtime, max_batch, access_log, log_path):
    """The server in a child process, its stderr (where it says where it listens, and its
    access log when that is "-") in ``log_path``, never an unread pipe that would fill."""
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "cli.py"), "serve", model_dir, "--port", "0",
             "--runtime", runtime, "--max-batch", str(max_batch), "--max-queue", "4096",
             "--access-log", access_log], stderr=log, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    found = None
    while found is None:
        with open(log_path) as f:
            found = re.search(r"(http://[0-9.]+:\d+/v1/models/[\w.-]+)", f.read())
        if found is None and (server.poll() is not None or time.monotonic() > deadline):
            server.kill()
            sys.exit(f"the server did not start: {open(log_path).read()[-2000:]}")
        time.sleep(0.1)
    return server, found.group(1) + ":predict"


# The server's forms: batching concurrent requests (its default) or not, with the access
# log off; and batched with the access log on (its default, here to a file): its cost.
FORMS = (("batched", 64, "off"), ("unbatched", 1, "off"), ("logged", 64, "FILE"))


def bench_runtime(args, runtime, pixels, body, figures, prefix, work):
    single, batched = in_process(args.model_dir, runtime, pixels, args.requests)
    print(f"in process ({runtime}): {single:.0f} images/s one at a time, "
          f"{batched:.0f} at 64 a call", flush=True)
    figures.update({f"{prefix}in_process_images_per_second": round(single, 1),
                    f"{prefix}in_process_batch64_images_per_second": round(batched, 1)})
    for form, max_batch, access in FORMS:
        access = os.path.join(work, f"access-{runtime}.log") if access == "FILE" else access
        server, url = serving(args.model_dir, runtime, max_batch, access,
                              os.path.join(work, f"server-{runtime}-{form}.txt"))
        try:
            for clients in (int(c) for c in args.clients.split(",")):
                rate, p50, p99 = asyncio.run(load(url, body, clients, args.requests))
                print(f"serve ({runtime}), {form:9s} {clients:3d} clients: {rate:7.0f} "
                      f"images/s ({rate / single:.2f}x in-process one at a time), p50 "
                      f"{p50:6.1f} ms, p99 {p99:6.1f} ms", flush=True)
                key = f"{prefix}{form}_{clients}"
                figures.update({f"{key}_images_per_second": round(rate, 1),
                                f"{key}_ratio": round(rate / single, 3),
                                f"{key}_p50_ms": round(p50, 2), f"{key}_p99_ms": round(p99, 2)})
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    for clients in args.clients.split(","):
        logged, alone = (figures[f"{prefix}{f}_{clients}_images_per_second"]
                         for f in ("logged", "batched"))
        figures[f"{prefix}access_log_cost_{clients}"] = round(logged / alone, 3)
        print(f"the access log ({runtime}, {clients} clients): {logged / alone:.2f}x the "
              f"images/s without it", flush=True)


def main():
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", default=os.path.join(ROOT, "exported",
                                                                     "cm_vanilla"))
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--runtime", default="tflite",
                        help="comma-separated, run side by side: tflite, tflite_int8, "
                             "tflite_fp16, saved_model")
    args = parser.parse_args()
    pixels = image()
    body = json.dumps({"instances": [pixels.tolist()]}).encode()
    figures = {}
    runtimes = args.runtime.split(",")
    with tempfile.TemporaryDirectory() as work:
        for runtime in runtimes:
            prefix = f"{runtime}_" if len(runtimes) > 1 else ""
            bench_runtime(args, runtime, pixels, body, figures, prefix, work)
    for key, value in figures.items():
        print(f"{key}={value}")


if __name__ == "__main__":
    main()
