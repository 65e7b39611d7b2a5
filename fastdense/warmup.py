"""``python -m fastdense warmup``: compile every kernel once so it lands in Numba's cache.

Run it after installing (or after upgrading Numba): later processes then load machine code
from the cache instead of compiling, and the first call of a layer takes milliseconds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _compile_all(dtype: np.dtype) -> None:
    # Imported here so that ``--help`` does not pay for Numba.
    from fastdense.kernels import activation as act
    from fastdense.kernels import dense as kd
    from fastdense.kernels import update
    from fastdense.kernels.gemm import gemm

    rng = np.random.default_rng(0)
    # Large enough for the packed, multi-threaded path; small ones for the direct path.
    for batch, n_in, units in ((1, 3, 2), (40, 120, 100)):
        x = rng.standard_normal((batch, n_in)).astype(dtype)
        w = rng.standard_normal((n_in, units)).astype(dtype)
        b = np.zeros(units, dtype)
        z = np.empty((batch, units), dtype)
        y = np.empty((batch, units), dtype)
        g = np.ones((batch, units), dtype)
        dz, dw, db, dx = np.empty_like(g), np.empty_like(w), np.empty_like(b), np.empty_like(x)
        for code in (act.LINEAR, act.RELU, act.SOFTMAX):
            kd.forward(x, w, b, code, z, y)
            kd.backward(x, w, b, z, y, g, code, dz, dw, db, dx, 0.0, 0.0, 0.0, 0.0, 0.0, False)
        kd.forward(x, w, kd.empty_bias(dtype), act.RELU, z, y)
        out = np.empty((batch, units), dtype)
        for ta, tb in ((False, False), (True, True)):
            a = np.ascontiguousarray(x.T) if ta else x
            bb = np.ascontiguousarray(w.T) if tb else w
            gemm(a, bb, out, ta, tb)
        act.activate(act.RELU, z, y)
        update.sgd(w.reshape(-1), dw.reshape(-1), 0.0, 0.0, 0.0)


def main(argv: list[str]) -> int:
    """Compile the float32 and float64 kernels; print the time taken.  Returns 0."""
    parser = argparse.ArgumentParser(prog="python -m fastdense warmup", description=__doc__)
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="both",
                        help="which dtype's kernels to compile (default: both)")
    args = parser.parse_args(argv)
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    total = time.perf_counter()
    for name in dtypes:
        start = time.perf_counter()
        _compile_all(np.dtype(name))
        print(f"{name}: kernels ready in {time.perf_counter() - start:.1f} s", flush=True)
    print(f"warmup done in {time.perf_counter() - total:.1f} s")
    return 0
