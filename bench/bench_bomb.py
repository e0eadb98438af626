#!/usr/bin/env python3
"""What one oversize request costs the served SavedModel, before and after the size check:
the same model written twice, its ``serving_bytes`` signature without the header check
(as exports were before it) and with it (``images.MAX_PIXELS``), each sent the same
decompression bomb in a child process of its own.

    python bench/bench_bomb.py [--side 20000] [--model exported/cm_vanilla/model.keras]

The bomb is a PNG declaring ``side`` x ``side`` black pixels (389 KB at 20,000). Each child
loads the SavedModel, serves one ordinary image (warm-up), then the bomb; it reports the
request's wall time, what came back (served, or refused with the reason) and the
process's peak resident memory over the warm-up's. Last lines are machine-readable.
"""

import argparse
import os
import struct
import sys
import tempfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cmxl_keras.children import run_or_exit  # noqa: E402
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CHILD = r"""
import resource, sys, time
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_bytes"]
ordinary = open(sys.argv[3], "rb").read()
serve(image_bytes=tf.constant([ordinary]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
bomb = open(sys.argv[2], "rb").read()
start = time.perf_counter()
try:
    serve(image_bytes=tf.constant([bomb]))
    outcome = "served"
except tf.errors.InvalidArgumentError as error:
    reason = error.message[error.message.find("assertion failed"):]
    outcome = "refused: " + reason.split("\n")[0][:200]
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"RESULT {seconds:.4f} {(peak - before) / 1024:.1f} {outcome}")
"""


def png_bomb(width, height):
    """A PNG that declares ``width`` x ``height`` grey pixels, all black: a 20,000 x 20,000
    one is 389 KB on disk and 1.2 GB of RGB once decoded (a decompression bomb)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    packer, row = zlib.compressobj(9), bytes(width + 1)  # a filter byte, then the row
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--model", default=os.path.join(ROOT, "exported", "cm_vanilla",
                                                        "model.keras"))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per child")
    args = parser.parse_args()

    import keras

    from cmxl_keras import images, runtime, savedmodel

    model = runtime.float32_model(keras.saving.load_model(args.model, compile=False))
    with tempfile.TemporaryDirectory() as work:
        bomb = os.path.join(work, "bomb.png")
        with open(bomb, "wb") as f:
            f.write(png_bomb(args.side, args.side))
        print(f"bomb: {args.side:,} x {args.side:,} pixels declared, {os.path.getsize(bomb):,} "
              f"bytes; limit {images.MAX_PIXELS:,} pixels; model {args.model}", flush=True)
        rows = {}
        for label, limit in (("before", None), ("after", images.MAX_PIXELS)):
            folder = os.path.join(work, label)
            savedmodel.write_saved_model(model, folder, max_pixels=limit)
            out = run_or_exit([sys.executable, "-c", CHILD, folder, bomb,
                               os.path.join(ROOT, "docs", "examples", "cat.png")],
                              args.timeout, label=f"the {label} child")
            line = next(row for row in out.stdout.splitlines() if row.startswith("RESULT"))
            _, seconds, memory, outcome = line.split(" ", 3)
            rows[label] = (float(seconds), float(memory))
            print(f"{label:<7} {float(seconds):8.3f} s  peak memory +{float(memory):8.1f} MB  "
                  f"{outcome}", flush=True)
    for label, (seconds, memory) in rows.items():
        print(f"{label}_seconds={seconds:.4f}")
        print(f"{label}_peak_memory_mb={memory:.1f}")


if __name__ == "__main__":
    main()
