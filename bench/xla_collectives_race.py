#!/usr/bin/env python3
"""Whether XLA's in-process CPU collectives still deadlock when several all-reduce programs
are in flight: the cause of ``distribute.OneCollectiveProgramInFlight`` (training under
``keras.distribution.DataParallel`` over JAX CPU devices waits for each step to finish).

    python bench/xla_collectives_race.py [--sums 3000] [--timeout 300]

Dispatches ``--sums`` sums of an array sharded over two virtual CPU devices back to back,
first waiting for each (what training does: it must finish), then without waiting (the
race). With jaxlib 0.10.2 on 2 cores the race deadlocked every time it was run, within
seconds, and XLA's collective timeout then aborted the process; a machine may also not
lose it. It prints one line per form and the jaxlib version. If the race finishes on a
new jaxlib every time, the workaround may go. Not a test: whether the race is lost
depends on the machine.
"""

import argparse
import os
import subprocess
import sys

SUMS = """
import sys, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()), ("batch",))
x = jax.device_put(np.ones((8, 8), np.float32), NamedSharding(mesh, P("batch")))
wait = sys.argv[1] == "wait"
for _ in range(int(sys.argv[2])):
    total = jnp.sum(x)
    if wait:
        total.block_until_ready()
print("finished", float(total))
"""
ENV = {"JAX_PLATFORMS": "cpu",
       "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=5 "
                    "--xla_cpu_collective_call_terminate_timeout_seconds=10"}


def sums(form, count, timeout):
    """Runs the sums in a child; returns (finished, its last output)."""
    try:
        out = subprocess.run([sys.executable, "-c", SUMS, form, str(count)], capture_output=True,
                             text=True, timeout=timeout, env=dict(os.environ, **ENV))
    except subprocess.TimeoutExpired as error:
        return False, f"no end within {timeout} s: {(error.stderr or b'')[-500:]!r}"
    finished = out.returncode == 0 and "finished" in out.stdout
    deadlock = "all reduce RendezvousKey" in out.stderr  # XLA's abort names the all-reduce
    return finished, ("XLA aborted a stuck all-reduce" if deadlock else
                      (out.stdout + out.stderr)[-500:].strip())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sums", type=int, default=3000)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    import jaxlib

    print(f"jaxlib {jaxlib.__version__}, {os.cpu_count()} cores, {args.sums} sums", flush=True)
    for form in ("wait", "race"):
        finished, why = sums(form, args.sums, args.timeout)
        print(f"{form}: " + ("finished" if finished else f"did not finish ({why})"), flush=True)


if __name__ == "__main__":
    main()
