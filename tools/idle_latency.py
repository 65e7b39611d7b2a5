"""Latency of one Dense forward call after the process has been idle, fastdense against NumPy.

Usage: ``python tools/idle_latency.py [pause_seconds ...]`` (default 0.01 0.05 0.1 0.25 1).

A steady benchmark loop never lets the threads rest; an inference service that answers a
request now and then does.  After each pause this times a single call, ``--repeat`` times per
pause, and prints the median and the worst.  Both libraries use the same number of threads
(threadpoolctl pins OpenBLAS).  Run it once as is and once with ``OMP_PROC_BIND=true`` in the
environment to compare with OpenMP threads bound to cores (see the README, "Functions, threads,
reference", and ``fastdense/kernels/_placement.py``).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

import fastdense

SHAPES = ((1, 784, 512), (32, 784, 128), (256, 784, 512))


def _numpy_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(x @ w + b, 0)


def after_pauses(call, pauses: list[float], repeat: int) -> list[tuple[float, float]]:
    """``(median, worst)`` seconds of one ``call`` right after each pause."""
    for _ in range(50):  # warm: compiled, caches and thread pools in use
        call()
    result = []
    for pause in pauses:
        times = []
        for _ in range(repeat):
            time.sleep(pause)
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        result.append((statistics.median(times), max(times)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pauses", nargs="*", type=float, default=[0.01, 0.05, 0.1, 0.25, 1.0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(args.threads)
    print(f"threads {args.threads}, OMP_PROC_BIND={os.environ.get('OMP_PROC_BIND', '(unset)')}; "
          "one call after each pause, median / worst in microseconds")
    print(f"{'layer':26s}" + "".join(f"{p:>16g}s" for p in args.pauses))
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        x = rng.standard_normal((m, k)).astype(np.float32)
        layer = fastdense.Dense(n, activation="relu", training=False)
        layer(x)
        w, b = layer.weight, layer.bias
        peers = {"fastdense": functools.partial(layer, x),
                 "numpy": functools.partial(_numpy_forward, x, w, b)}
        for name, call in peers.items():
            cells = after_pauses(call, args.pauses, args.repeat)
            row = "".join(f"{med * 1e6:>9.0f} /{worst * 1e6:>7.0f}" for med, worst in cells)
            print(f"{name + f' {m} x {k}->{n}':26s}{row}", flush=True)


if __name__ == "__main__":
    main()
