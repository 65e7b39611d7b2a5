"""Products with few columns (``narrow.narrow_product``) against the packed product's bits."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from fastdense import activations
from fastdense.kernels import activation as act
from fastdense.kernels import dense as kd
from fastdense.kernels import narrow as kn
from fastdense.kernels._tiles import BLOCKING, NARROW_TILES
from fastdense.kernels.gemm import EP_BIAS_ACT, EP_SGD, EP_STORE, SHORT_WORKSPACE, product
from tests.helpers import run_beside_a_guard_page
from tests.kernels.conftest import product_tolerance

KC = BLOCKING["float32"][2]
# (rows, steps, columns; 0 columns, or more than the narrow tile's: its width): a single
# partial panel, tiny
# ``b`` (fewer elements than a tile row: all of it read from the copy of its last block), whole
# panels over exactly KC steps, two KC blocks with a last one of one step, three blocks with
# partial panels and a few columns (the copy serves rows that read past ``b``'s end), and
# enough rows for the threads, with a short reduction.  A last partial panel of the 6-row
# tiles is computed as the panel ending at the last row (13, 250 and 97 rows), unless there
# are fewer rows than a panel, which are copied and padded (4 rows).
SHAPES = [(5, 7, 3), (1, 1, 1), (2, 2, 2), (12, KC, 0), (13, KC + 1, 10), (100, 2 * KC + 1, 3),
          (250, 64, 0), (97, 784, 10), (4, 30, 0)]
# Around the width of the tiles of 256-bit rows (NARROW_HALF_TILES: 8 float32 or 4 float64
# columns), whose panels are of eight rows: at it and one column past it, in either dtype.
SHAPES += [(43, 300, 4), (29, 70, 5), (45, 130, 8), (21, 200, 9)]
ELEMENTWISE = ["linear", "relu", "sigmoid", "gelu", "leaky_relu", "softplus"]


def _operands(rng, m, k, n, dtype, use_bias=True):
    a = rng.standard_normal((m, k)).astype(dtype)
    b = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(dtype)
    bias = (rng.standard_normal(n) * 0.1).astype(dtype) if use_bias else kd.empty_bias(dtype)
    return a, b, bias


def _width(n, dtype):
    """``n`` columns, at most the narrow tile's (0: all of them)."""
    nr = NARROW_TILES[np.dtype(dtype).name][1]
    return min(n, nr) if n else nr


def _ws(dtype, threads=None):
    name = np.dtype(dtype).name
    mr, nr = NARROW_TILES[name]
    return np.empty(kn.narrow_ws_len(mr, nr, BLOCKING[name][2],
                                     threads or numba.config.NUMBA_NUM_THREADS), dtype)


def _on_threads(threads, fn):
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return fn()
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bits_of_the_packed_product_on_one_thread_and_all(shape, name, use_bias, dtype):
    """``act(a @ b + bias)`` by row tiles has the very bits of ``dense.forward`` (the packed or
    direct product with the same KC blocks), whatever the thread count, and is within the
    reduction's error bound of the float64 product."""
    m, k, n = shape
    n = _width(n, dtype)
    act_ = activations.get(name)
    act_.prepare(dtype)
    code = act_.code
    a, b, bias = _operands(np.random.default_rng(m + k + n), m, k, n, dtype, use_bias)
    z_ref, y_ref = np.empty((m, n), dtype), np.empty((m, n), dtype)
    kd.forward(a, b, bias, code, z_ref, y_ref)
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        z, y = np.full((m, n), np.nan, dtype), np.full((m, n), np.nan, dtype)
        _on_threads(threads, lambda z=z, y=y: kn.narrow_product(a, b, z, EP_BIAS_ACT, bias,
                                                                 code, y, z, 0.0, 0.0, 0.0,
                                                                 _ws(dtype)))
        assert np.array_equal(z, z_ref)
        assert np.array_equal(y, y_ref)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    if use_bias:
        exact += bias
    assert np.all(np.abs(z - exact) <= product_tolerance(a, b, dtype) + 4 * np.finfo(dtype).eps
                  * np.abs(exact))


@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (0.001, 0.01)], ids=["plain", "penalties"])
@pytest.mark.parametrize("shape", [(130, 6, 10), (97, 2 * KC + 3, 5), (40, 300, 0)],
                         ids=lambda s: "x".join(map(str, s)))
def test_sgd_epilogue_gives_the_bits_of_the_packed_product(shape, l1, l2, dtype):
    """The weight gradient ``x.T @ d`` by row tiles (``a`` transposed in place) applied by SGD
    as it is stored, over one KC block or a running sum of several, updates ``w`` to the bits
    of ``gemm.product``'s fused step; the plain store writes the gradient's bits."""
    n_in, batch, units = shape
    units = _width(units, dtype)
    rng = np.random.default_rng(n_in + batch)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    d = rng.standard_normal((batch, units)).astype(dtype)
    w0 = rng.standard_normal((n_in, units)).astype(dtype)
    ws = np.empty(kd.workspace_size(n_in, units, dtype) * 4, dtype)
    e = kd.empty_bias(dtype)
    outs = []
    for ep in (EP_SGD, EP_STORE):
        w_ref, dw_ref = w0.copy(), np.empty_like(w0)
        product(x, d, dw_ref, True, False, ep, e, act.LINEAR, dw_ref, w_ref, 0.01, l1, l2, ws)
        w, dw = w0.copy(), np.empty_like(w0)
        kn.narrow_product(x.T, d, dw, ep, e, act.LINEAR, dw, w, 0.01, l1, l2, _ws(dtype))
        outs.append((w, w_ref) if ep == EP_SGD else (dw, dw_ref))
    for got, ref in outs:
        assert np.array_equal(got, ref)
    assert not np.array_equal(outs[0][0], w0)


def test_plain_store_and_strided_rows(dtype):
    """``EP_STORE`` writes the product alone; ``a`` may be any strided view (read in place)."""
    rng = np.random.default_rng(5)
    m, k, n = 40, 300, 7
    wide = rng.standard_normal((m, 2 * k)).astype(dtype)
    a = wide[:, ::2]
    b = rng.standard_normal((k, n)).astype(dtype)
    out = np.full((m, n), np.nan, dtype)
    kn.narrow_product(a, b, out, EP_STORE, kd.empty_bias(dtype), act.LINEAR, out, out, 0.0, 0.0,
                      0.0, _ws(dtype))
    ref = np.empty((m, n), dtype)
    kd.forward(np.ascontiguousarray(a), b, kd.empty_bias(dtype), act.LINEAR, ref, ref)
    assert np.array_equal(out, ref)


def test_nan_and_inf_propagate(dtype):
    """A NaN or an infinity in ``a`` reaches its row of the output and no other."""
    rng = np.random.default_rng(6)
    a, b, bias = _operands(rng, 20, 50, 7, dtype)
    a[3, 7] = np.nan
    a[11, 0] = np.inf
    b[0] = np.abs(b[0]) + 1
    z = np.empty((20, 7), dtype)
    kn.narrow_product(a, b, z, EP_BIAS_ACT, bias, act.LINEAR, z, z, 0.0, 0.0, 0.0, _ws(dtype))
    assert np.all(np.isnan(z[3]))
    assert np.all(np.isposinf(z[11]))
    assert np.all(np.isfinite(np.delete(z, [3, 11], axis=0)))


def test_a_short_workspace_is_refused(dtype):
    a, b, bias = _operands(np.random.default_rng(7), 8, 10, 3, dtype)
    z = np.zeros((8, 3), dtype)
    with pytest.raises(ValueError, match="workspace is too short"):
        kn.narrow_product(a, b, z, EP_BIAS_ACT, bias, act.LINEAR, z, z, 0.0, 0.0, 0.0,
                          np.empty(8, dtype))
    assert SHORT_WORKSPACE.startswith("the workspace is too short")
    assert not z.any()


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_never_reads_past_the_end_of_b(dtype_name):
    """The tiles read ``b``'s rows past their end (into the next rows) but never past the end
    of ``b``: here ``b`` ends where an unreadable page begins, and a read there would kill the
    process."""
    run_beside_a_guard_page(f"""
        from fastdense.kernels import activation as act, narrow as kn, dense as kd
        from fastdense.kernels._tiles import BLOCKING, NARROW_HALF_TILES, NARROW_TILES
        from fastdense.kernels.gemm import EP_STORE
        dt = np.dtype("{dtype_name}")
        mr, nr = NARROW_TILES[dt.name]
        ws = np.empty(kn.narrow_ws_len(mr, nr, BLOCKING[dt.name][2], 8), dt)
        half = NARROW_HALF_TILES[dt.name][1]
        for k, n in ((1, 1), (3, 2), (100, 3), (513, 5), (40, nr - 1), (1025, 1), (520, 2),
                     (70, half), (33, half + 1)):
            b = guarded((k, n), dt)
            b[...] = 1
            a = np.ones((7, k), dt)
            out = np.empty((7, n), dt)
            kn.narrow_product(a, b, out, EP_STORE, kd.empty_bias(dt), act.LINEAR, out, out, 0.0,
                              0.0, 0.0, ws)
            assert np.all(out == k), (k, n)
    """)


def test_a_wider_b_is_refused(dtype):
    nr = NARROW_TILES[np.dtype(dtype).name][1]
    a, b, bias = _operands(np.random.default_rng(8), 8, 10, nr + 1, dtype)
    z = np.zeros((8, nr + 1), dtype)
    with pytest.raises(ValueError, match="at most the narrow tile's columns"):
        kn.narrow_product(a, b, z, EP_BIAS_ACT, bias, act.LINEAR, z, z, 0.0, 0.0, 0.0, _ws(dtype))
    assert not z.any()


def test_a_product_of_no_steps_is_refused(dtype):
    a, b = np.empty((8, 0), dtype), np.empty((0, 3), dtype)
    z = np.zeros((8, 3), dtype)
    with pytest.raises(ValueError, match="at least one step"):
        kn.narrow_product(a, b, z, EP_STORE, kd.empty_bias(dtype), act.LINEAR, z, z, 0.0, 0.0,
                          0.0, _ws(dtype))
    assert not z.any()


def test_workspace_length_grows_with_the_threads():
    mr, nr = NARROW_TILES["float32"]
    one = kn.narrow_ws_len(mr, nr, KC, 1)
    assert kn.narrow_ws_len(mr, nr, KC, 2) - one == one - kn.narrow_ws_len(mr, nr, KC, 0)
    assert one >= mr * nr + KC * mr + (KC + nr) * nr + nr


def test_matmul_rule():
    """``fastdense.matmul`` takes the row tiles for at most the narrow tile's columns, from
    three rows and steps, and for the direct path's work only over at most KC steps (the bits
    of its single chain)."""
    for dtype in (np.float32, np.float64):
        nr = NARROW_TILES[np.dtype(dtype).name][1]
        assert kn.matmul_takes(1024, nr, 784, dtype)
        assert kn.matmul_takes(3, 1, 10000, dtype)
        assert not kn.matmul_takes(1024, nr + 1, 784, dtype)
        assert not kn.matmul_takes(2, nr, 784, dtype)  # gemm_rows
        assert kn.matmul_takes(4, 4, 4, dtype) and kn.matmul_takes(3, 1, KC, dtype)
        assert not kn.matmul_takes(3, 1, KC + 1, dtype)  # the direct path's single chain
        assert not kn.matmul_takes(1024, 1, 2, dtype)
        assert not kn.matmul_takes(1024, 0, 784, dtype)
        assert not kn.matmul_takes(1024, nr, 0, dtype)
        assert kn.workspace_len(dtype) == kn.narrow_ws_len(*NARROW_TILES[np.dtype(dtype).name],
                                                           KC, numba.config.NUMBA_NUM_THREADS)
