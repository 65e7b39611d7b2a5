"""``python -m fastdense warmup``: compile every kernel once so it lands in Numba's cache.

Run it after installing (or after upgrading Numba): later processes then load machine code
from the cache instead of compiling, and the first call of a layer takes milliseconds.  It
drives the public API (layers, functions, optimizers, losses, a model fit) on tiny data rather
than listing kernels, so whatever path a user's code takes is compiled.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

#: ``(batch, in, units)`` of the layers run: a batch of one (the row entry points, before and
#: after the layer's first backprop: ``kernels.dense.rows_threads_from``), five of few units
#: (``kernels.dense.uses_narrow``), whose input gradient runs as a product and, for the second
#: and the fifth, by rows, and whose weight gradient runs in float32 transposed for those of at
#: most MR units and by row tiles for the others, with either tile set
#: (``kernels.dense.backward_narrow_for``: MR 8, so 7 units transposed and 9 by row tiles, 3
#: by strips of three units at once; or MR 6, 3 transposed and 7 by row tiles), and by strips
#: for the fifth (one unit);
#: one of 10 units over 300 rows, whose input gradient runs by rows on the
#: general kernels where it does not take those of few units (float64 with the AVX-512
#: tiles: ``kernels.dense.backward_for``); and one large enough for the packed, threaded path
#: and for outputs allocated on cache lines (``_aligned.OUTPUT_BYTES``) in both dtypes.
LAYER_SHAPES = ((1, 3, 2), (40, 120, 3), (300, 24, 3), (40, 120, 7), (40, 120, 9),
                (80, 120, 1), (300, 24, 10), (40, 120, 110))
#: Rows of a product whose output is allocated in phase with B (``_aligned.reads_b_in_place``
#: for the larger shape).
FEW_ROWS = 32


def _compile_all(dtype: np.dtype) -> None:
    # Imported here so that ``--help`` does not pay for Numba.
    import fastdense as fd
    from fastdense import activations
    from fastdense.kernels import dense as kdense

    rng = np.random.default_rng(0)
    for batch, n_in, units in LAYER_SHAPES:
        x = rng.standard_normal((batch, n_in)).astype(dtype)
        g = np.ones((batch, units), dtype)
        for name in activations.NAMES:
            for use_bias in (True, False):
                layer = fd.Dense(units, activation=name, use_bias=use_bias, dtype=dtype, seed=0,
                                 kernel_regularizer="l2")
                layer(x)
                layer.backprop(g, fd.SGD(0.0))
                layer(x)
                layer.backprop(g, fd.Adam(0.0), compute_input_grad=False)
        w = np.ones((n_in, units), dtype)
        fd.matmul(x, x.T)
        # Few rows: the output is allocated where ``w`` lies within its cache line.
        fd.matmul(x[:FEW_ROWS], w)
        fd.linear(x, w, np.ones(units, dtype), "relu")
    # A backward pass's dz over the threads (large first layers, softmax), which layers call
    # apart from the backward kernel (kernels.dense.dz_over_threads): too large to run here.
    z = np.ones((4, 3), dtype)
    kdense.activation_grad(z, z, z, activations.get("relu").code, np.empty_like(z))
    x = rng.standard_normal((64, 8)).astype(dtype)
    labels = (x[:, 0] > 0).astype(np.int64)
    onehot = np.eye(2, dtype=dtype)[labels]
    setups = [("sparse_categorical_crossentropy", labels, "softmax"),
              ("categorical_crossentropy", onehot, "softmax"),
              ("binary_crossentropy", labels[:, None].astype(dtype), "sigmoid"),
              ("mean_squared_error", onehot, None), ("mean_absolute_error", onehot, None)]
    optimizers = [fd.SGD(0.01), fd.SGD(0.01, momentum=0.9, nesterov=True), fd.Adam(),
                  fd.AdamW(), fd.RMSprop()]
    for (loss, y, last), opt in zip(setups, optimizers, strict=True):
        units = 1 if last == "sigmoid" else 2
        model = fd.Sequential([fd.Dense(4, activation="relu", dtype=dtype, seed=0),
                               fd.Dense(units, activation=last, dtype=dtype, seed=1)])
        model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, seed=0)
        model.evaluate(x, y, batch_size=16)
        model.predict(x, batch_size=16)


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
