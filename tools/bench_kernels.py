"""Measure fastdense's kernels against NumPy (OpenBLAS) in one process.

Usage: ``python tools/bench_kernels.py [matmul] [layer]``.  Both libraries use the same number
of threads (threadpoolctl pins OpenBLAS); each timing is the best of several blocks of repeats,
the two libraries alternating block by block.
"""

from __future__ import annotations

import functools
import sys
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

import fastdense
from fastdense.kernels import activation as act
from fastdense.kernels import dense as kd


def _best(fns, min_time=0.01, rounds=15):
    """Best per-call time of each function, blocks alternating between functions.

    Many short blocks rather than a few long ones: on a shared machine the best block is the
    one that ran while the cores were free, and short blocks are likelier to.
    """
    reps = []
    for f in fns:
        f()
        t = time.perf_counter()
        f()
        dt = max(time.perf_counter() - t, 1e-7)
        reps.append(max(1, int(min_time / dt)))
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            for _ in range(reps[i]):
                f()
            best[i] = min(best[i], (time.perf_counter() - t) / reps[i])
    return best


def bench_matmul(sizes=(1024, 2048), dtypes=(np.float32, np.float64)):
    rng = np.random.default_rng(0)
    for dt in dtypes:
        for s in sizes:
            a = rng.standard_normal((s, s)).astype(dt)
            b = rng.standard_normal((s, s)).astype(dt)
            # Both allocate their result: ``a @ b`` against ``fastdense.matmul``.
            t_np, t_fd = _best([functools.partial(np.matmul, a, b),
                                functools.partial(fastdense.matmul, a, b)],
                               min_time=0.05, rounds=12)
            gf = 2 * s**3 / 1e9
            print(f"matmul {np.dtype(dt).name} {s}^3: numpy {gf / t_np:7.1f} GF/s  fastdense "
                  f"{gf / t_fd:7.1f} GF/s  ratio {t_np / t_fd:5.2f}", flush=True)


def _layer_fns(rng, bsz, n_in, units, dt, code):
    x = rng.standard_normal((bsz, n_in)).astype(dt)
    w = (rng.standard_normal((n_in, units)) * 0.05).astype(dt)
    b = np.zeros(units, dt)
    z = np.empty((bsz, units), dt)
    y = np.empty((bsz, units), dt)
    g = rng.standard_normal((bsz, units)).astype(dt)
    dz, dw, db, dx = (np.empty_like(g), np.empty_like(w), np.empty_like(b),
                      np.empty_like(x))
    wn, bn = w.copy(), b.copy()
    lr = dt(1e-6)
    ws = np.empty(kd.workspace_size(n_in, units, dt), dt)

    def np_fwd():
        zz = x @ wn
        zz += bn
        return np.maximum(zz, 0)

    def fd_fwd():
        kd.forward(x, w, b, code, z, y, ws)

    def np_step():
        zz = x @ wn
        zz += bn
        yy = np.maximum(zz, 0)
        d = g * (zz > 0)
        dxx = d @ wn.T
        dww = x.T @ d
        dbb = d.sum(0)
        wn[...] -= lr * dww
        bn[...] -= lr * dbb
        return yy, dxx

    def fd_step():
        kd.forward(x, w, b, code, z, y, ws)
        kd.backward(x, w, b, z, y, g, code, dz, dw, db, dx, 1e-6, 0.0, 0.0, 0.0,
                    0.0, True, ws)

    return np_fwd, fd_fwd, np_step, fd_step


def bench_layers(batches=(1, 32, 128, 256, 1024),
                 layers=((64, 64), (784, 128), (256, 256), (784, 512), (1024, 1024),
                         (4096, 1024)), dt=np.float32, code=act.RELU):
    rng = np.random.default_rng(0)
    ratios_f, ratios_s = [], []
    print(f"{'batch':>5} {'layer':>10} {'fwd np us':>10} {'fwd fd us':>10} {'ratio':>6} "
          f"{'step np us':>11} {'step fd us':>11} {'ratio':>6}")
    for bsz in batches:
        for n_in, units in layers:
            np_fwd, fd_fwd, np_step, fd_step = _layer_fns(rng, bsz, n_in, units, dt, code)
            tf = _best([np_fwd, fd_fwd])
            ts = _best([np_step, fd_step])
            print(f"{bsz:5d} {n_in:>5}->{units:<5} {tf[0] * 1e6:10.1f} {tf[1] * 1e6:10.1f} "
                  f"{tf[0] / tf[1]:6.2f} {ts[0] * 1e6:11.1f} {ts[1] * 1e6:11.1f} "
                  f"{ts[0] / ts[1]:6.2f}", flush=True)
            ratios_f.append(tf[0] / tf[1])
            ratios_s.append(ts[0] / ts[1])
    gm = [float(np.exp(np.mean(np.log(r)))) for r in (ratios_f, ratios_s)]
    print(f"geomean forward {gm[0]:.2f} (min {min(ratios_f):.2f})  step {gm[1]:.2f} "
          f"(min {min(ratios_s):.2f})", flush=True)


def main(argv: list[str]) -> int:
    what = set(argv) or {"matmul", "layer"}
    nthreads = numba.get_num_threads()
    with threadpool_limits(limits=nthreads, user_api="blas"):
        print(f"threads: {nthreads}")
        if "matmul" in what:
            bench_matmul()
        if "layer" in what:
            bench_layers()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
