"""Fused Dense forward/backward kernels against the plain NumPy reference."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import fastdense
from fastdense import activations, reference
from fastdense.kernels import activation as act
from fastdense.kernels import dense as kd
from fastdense.kernels._isa import TILES
from fastdense.kernels.gemm import OWN_B_BYTES, gemm, vector_block_rows
from tests.bounds import dots_bound
from tests.kernels.conftest import product_tolerance

NAMES = ["linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "leaky_relu", "elu", "selu",
         "swish", "softplus"]
# (batch, in, units): the direct path, the packed path with edge tiles, a skinny training shape,
# a batch above gemm.DIRECT_ROWS (the backward pass fuses dz into the packing of dx's A), and
# a batch of two KC blocks (``x.T @ dz`` sums the bias gradient in tasks that span them).
SHAPES = [(1, 9, 5), (37, 70, 45), (130, 300, 70), (300, 37, 45), (600, 40, 45)]
# Largest |act'| over the reals (bounds how a tolerance on z carries to y).
LIPSCHITZ = 2.0


def _layer(rng, batch, n_in, units, dtype, use_bias=True):
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    w = (rng.standard_normal((n_in, units)) / np.sqrt(n_in)).astype(dtype)
    b = (rng.standard_normal(units) * 0.1).astype(dtype) if use_bias else kd.empty_bias(dtype)
    return x, w, b


def _z_reference(x, w, b):
    z = x.astype(np.float64) @ w.astype(np.float64)
    return z + b.astype(np.float64) if b.size else z


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_fused_epilogue(name, shape, dtype):
    batch, n_in, units = shape
    rng = np.random.default_rng(batch + n_in)
    x, w, b = _layer(rng, batch, n_in, units, dtype)
    code = activations.get(name).code
    z = np.full((batch, units), np.nan, dtype)
    y = np.full((batch, units), np.nan, dtype)
    kd.forward_for(code)(x, w, b, code, z, y)
    zref = _z_reference(x, w, b)
    tol = product_tolerance(x, w, dtype) + 4 * np.finfo(dtype).eps * np.abs(zref)
    assert np.all(np.abs(z - zref) <= tol)
    yref = reference.act_forward(name, zref)
    ytol = LIPSCHITZ * tol + 8 * np.finfo(dtype).eps * (np.abs(yref) + 1)
    assert np.all(np.abs(y - yref) <= ytol)


@pytest.mark.parametrize("name", ["linear", "relu", "softmax"])
def test_forward_in_place_and_without_bias(name, dtype):
    rng = np.random.default_rng(3)
    x, w, b = _layer(rng, 50, 80, 33, dtype, use_bias=False)
    code = activations.get(name).code
    y = np.empty((50, 33), dtype)
    kd.forward_for(code)(x, w, b, code, y, y)
    zref = _z_reference(x, w, b)
    tol = LIPSCHITZ * product_tolerance(x, w, dtype) + 8 * np.finfo(dtype).eps
    assert np.all(np.abs(y - reference.act_forward(name, zref)) <= tol)


@pytest.mark.parametrize("batch", [1, 70])
def test_nan_in_a_sample_stays_in_that_sample(batch, dtype):
    rng = np.random.default_rng(4)
    x, w, b = _layer(rng, batch, 300, 70, dtype)
    x[batch // 2, 17] = np.nan
    y = np.empty((batch, 70), dtype)
    kd.forward(x, w, b, act.RELU, y, y)
    bad = batch // 2
    assert np.isnan(y[bad]).all()
    assert np.isfinite(np.delete(y, bad, axis=0)).all()


def _backward_reference(name, x, w, b, z, y, g):
    d = reference.act_backward(name, z.astype(np.float64), y.astype(np.float64),
                               g.astype(np.float64))
    return d, d @ w.T.astype(np.float64), x.T.astype(np.float64) @ d, d.sum(axis=0)


# Batches of one or two also have their own entry points (one pass over the weights): the
# larger shapes summed in row blocks split over threads, 2 x 256->255 just below that size.
# The last: partial sums wider than the rest of the layer's workspace.
# 1 x 256->300 is summed in row blocks that one thread takes below VECTOR_THREADS_BYTES
# (float32), and the threads above (float64).
ROW_SHAPES = [(1, 9, 5), (2, 70, 45), (2, 256, 255), (1, 256, 300), (1, 600, 300),
              (2, 300, 600), (2, 1500, 700), (2, 16, 20000)]


def _backward_entry(entry):
    return kd.backward_rows if entry == "rows" else kd.backward


@pytest.mark.parametrize("fuse_sgd", [False, True], ids=["grads", "sgd"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape,entry",
                         [*((s, "generic") for s in SHAPES), *((s, "rows") for s in ROW_SHAPES)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_backward(name, shape, entry, fuse_sgd, dtype):
    batch, n_in, units = shape
    rng = np.random.default_rng(batch * 3 + units)
    x, w, b = _layer(rng, batch, n_in, units, dtype)
    code = activations.get(name).code
    z = np.empty((batch, units), dtype)
    y = np.empty((batch, units), dtype)
    kd.forward_for(code)(x, w, b, code, z, y)
    g = rng.standard_normal((batch, units)).astype(dtype)
    dz, dw, db, dx = (np.empty_like(g), np.empty_like(w), np.empty_like(b), np.empty_like(x))
    w0, b0 = w.copy(), b.copy()
    lr, l1w, l2w, l1b, l2b = 0.05, 0.01, 0.02, 0.003, 0.004
    ws = np.empty(kd.workspace_size(n_in, units, dtype), dtype)
    _backward_entry(entry)(x, w, b, z, y, g, code, dz, dw, db, dx, lr if fuse_sgd else 0.0,
                           l1w, l2w, l1b, l2b, fuse_sgd, ws)
    d, dx_ref, dw_ref, db_ref = _backward_reference(name, x, w0, b0, z, y, g)
    eps = np.finfo(dtype).eps
    dabs = np.abs(d)
    # dz carries rounding from act': a few ulps of each of its terms, which are bounded by
    # |g| (1 + |z|) (e.g. 1 - y*y for tanh loses eps absolutely, not relatively).
    dtol = 8 * eps * (dabs + np.abs(g) * (1 + np.abs(z)))
    if name == "softmax":
        # dz = y (g - <g, y>): the row reduction of n products adds (n + 2) eps sum|g y|
        # before the difference, which may cancel.
        row = np.abs(g * y).sum(axis=1, keepdims=True)
        dtol = dtol + (units + 2) * eps * np.abs(y) * row
    dx_tol = product_tolerance(dabs, np.abs(w0.T), dtype) + dtol @ np.abs(w0.T) * 2
    dw_tol = product_tolerance(np.abs(x.T), dabs, dtype) + np.abs(x.T) @ dtol * 2
    db_tol = 2 * (batch + 2) * eps * dabs.sum(axis=0) + dtol.sum(axis=0) * 2
    assert np.all(np.abs(dx - dx_ref) <= dx_tol)
    assert np.all(np.abs(db - db_ref) <= db_tol)
    if name != "linear":
        assert np.all(np.abs(dz - d) <= dtol + np.finfo(dtype).tiny)
    if fuse_sgd:
        w64, b64 = w0.astype(np.float64), b0.astype(np.float64)
        w_ref = w64 - lr * (dw_ref + l1w * np.sign(w64) + 2 * l2w * w64)
        b_ref = b64 - lr * (db_ref + l1b * np.sign(b64) + 2 * l2b * b64)
        assert np.all(np.abs(w - w_ref) <= lr * dw_tol + 4 * eps * (np.abs(w_ref) + lr))
        assert np.all(np.abs(b - b_ref) <= lr * db_tol + 4 * eps * (np.abs(b_ref) + lr))
    else:
        assert np.all(np.abs(dw - dw_ref) <= dw_tol)
        assert np.array_equal(w, w0) and np.array_equal(b, b0)


# Layers of fewer units than a register panel on the general kernels (float32 17 to 31 and
# float64 9 to 15 units with the AVX-512 tiles; here NR - 3 units, and one): their weight
# gradient reads dz in place (``gemm._narrow_b_tail``) and sums the bias gradient apart.  Over
# one KC block (512 steps) and several, for fewer and more inputs than DIRECT_ROWS.
@pytest.mark.parametrize("units", [1, -3], ids=["1", "NR-3"])
@pytest.mark.parametrize("batch, n_in", [(40, 200), (513, 300), (1027, 90)],
                         ids=lambda v: str(v))
def test_gradients_of_fewer_units_than_a_panel_give_the_bits_of_packed_ones(batch, n_in, units,
                                                                            dtype):
    """The weight gradient has the bits of ``x.T @ dz`` with ``dz`` transposed (packed), the
    bias gradient those of the rows' sums in order, and the input gradient is untouched by
    that path."""
    name = np.dtype(dtype).name
    units = units if units > 0 else kd.BLOCKING[name][1] + units
    rng = np.random.default_rng(batch + n_in + units)
    x, w, b = _layer(rng, batch, n_in, units, dtype)
    g = rng.standard_normal((batch, units)).astype(dtype)
    dz, dw, db, dx = (np.empty_like(g), np.empty_like(w), np.empty_like(b), np.empty_like(x))
    ws = np.empty(kd.workspace_size(n_in, units, dtype), dtype)
    kd.backward(x, w, b, g, g, g, act.LINEAR, dz, dw, db, dx, 0.0, 0.0, 0.0, 0.0, 0.0, False,
                ws)
    dw_ref = np.empty_like(w)
    gemm(x, np.ascontiguousarray(g.T), dw_ref, True, True)
    db_ref = np.zeros(units, dtype)
    for row in g:
        db_ref += row
    dx_ref = np.empty_like(x)
    gemm(g, w, dx_ref, False, True)
    assert np.array_equal(dw, dw_ref)
    assert np.array_equal(db, db_ref)
    assert np.array_equal(dx, dx_ref)


def test_backward_without_bias_and_empty_batch(dtype):
    rng = np.random.default_rng(5)
    for batch in (0, 40):
        x, w, b = _layer(rng, batch, 50, 60, dtype, use_bias=False)
        z = np.empty((batch, 60), dtype)
        kd.forward(x, w, b, act.TANH, z, z)
        g = np.ones((batch, 60), dtype)
        dz, dw, dx = np.empty_like(g), np.full_like(w, np.nan), np.empty_like(x)
        kd.backward(x, w, b, z, z, g, act.TANH, dz, dw, b, dx, 0.0, 0.0, 0.0, 0.0, 0.0, False)
        _, dx_ref, dw_ref, _ = _backward_reference("tanh", x, w, b, z, z, g)
        tol = 1e3 * np.finfo(dtype).eps * (1 + batch)
        assert np.allclose(dw, dw_ref, rtol=tol, atol=tol)
        assert np.allclose(dx, dx_ref, rtol=tol, atol=tol)


def test_forward_refuses_softmax_which_has_its_own_kernel(dtype):
    """``forward`` takes element-wise activations only: given softmax it raises instead of
    returning the linear part, and ``forward_for`` hands out ``forward_softmax`` for it."""
    rng = np.random.default_rng(2)
    x, w, b = _layer(rng, 40, 120, 110, dtype)
    y = np.zeros((40, 110), dtype)
    with pytest.raises(ValueError, match="forward_softmax"):
        kd.forward(x, w, b, act.SOFTMAX, y, y)
    assert kd.forward_for(act.SOFTMAX) is kd.forward_softmax
    assert kd.forward_for(act.RELU) is kd.forward
    kd.forward_for(act.SOFTMAX)(x, w, b, act.SOFTMAX, y, y)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=100 * np.finfo(dtype).eps)


def test_forward_rows_refuses_softmax_which_has_its_own_kernel(dtype):
    """Likewise for batches of one or two rows: ``forward_rows`` raises before writing, and
    ``forward_for(code, rows=True)`` hands out ``forward_rows_softmax``, which gives
    ``forward_softmax``'s bits."""
    rng = np.random.default_rng(3)
    x, w, b = _layer(rng, 2, 120, 110, dtype)
    ws = np.empty(kd.workspace_size(120, 110, dtype), dtype)
    y = np.full((2, 110), 7, dtype)
    with pytest.raises(ValueError, match="forward_rows_softmax"):
        kd.forward_rows(x, w, b, act.SOFTMAX, y, y, ws, 0)
    assert np.all(y == 7)
    assert kd.forward_for(act.SOFTMAX, rows=True) is kd.forward_rows_softmax
    assert kd.forward_for(act.RELU, rows=True) is kd.forward_rows
    z = np.empty_like(y)
    kd.forward_for(act.SOFTMAX, rows=True)(x, w, b, act.SOFTMAX, z, y, ws, 0)
    z_ref, y_ref = np.empty_like(y), np.empty_like(y)
    kd.forward_softmax(x, w, b, act.SOFTMAX, z_ref, y_ref, ws)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(z, z_ref)


def test_forward_empty_batch(dtype):
    x = np.empty((0, 7), dtype)
    w = np.ones((7, 3), dtype)
    y = np.empty((0, 3), dtype)
    kd.forward_softmax(x, w, np.ones(3, dtype), act.SOFTMAX, y, y)
    assert y.shape == (0, 3)


@pytest.mark.parametrize("shape", [(96, 600, 300), (600, 40, 45)], ids=["96x600x300", "600x40x45"])
@pytest.mark.parametrize("name", ["relu", "softmax", "tanh"])
def test_bitwise_identical_for_any_thread_count(name, shape, dtype):
    rng = np.random.default_rng(6)
    code = activations.get(name).code
    batch, n_in, units = shape
    x0, w0, b0 = _layer(rng, batch, n_in, units, dtype)
    g = rng.standard_normal((batch, units)).astype(dtype)
    runs = []
    before = numba.get_num_threads()
    try:
        for nt in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(nt)
            x, w, b = x0.copy(), w0.copy(), b0.copy()
            z = np.empty((batch, units), dtype)
            y = np.empty((batch, units), dtype)
            kd.forward_for(code)(x, w, b, code, z, y)
            dz, dw, db, dx = (np.empty_like(g), np.empty_like(w), np.empty_like(b),
                              np.empty_like(x))
            kd.backward(x, w, b, z, y, g, code, dz, dw, db, dx, 0.0, 0.0, 0.0, 0.0, 0.0, False)
            out = [z, y, dx, dw.copy(), db.copy()]
            kd.backward(x, w, b, z, y, g, code, dz, dw, db, dx, 0.01, 0.001, 0.002, 0.0, 0.0,
                        True)
            runs.append([*out, w, b, dx])
    finally:
        numba.set_num_threads(before)
    for r1, r2 in zip(runs[0], runs[1], strict=True):
        assert np.array_equal(r1, r2)


# Double-buffered up to 64 rows in float64 and 128 in float32 (two row blocks); 100 rows in
# float64 and 129 in float32 take the single-buffered row packing.  Float32 weights of up to one
# row block (64 rows; rows of 8.4 KB, at most DIRECT_SKINNY_ROW_BYTES) are read in place on
# several threads (float64 rows of 16.8 KB are packed).
@pytest.mark.parametrize("batch", [5, 37, 64, 100, 128, 129])
def test_forward_of_weights_streamed_from_memory(batch, dtype):
    """Weights over OWN_B_BYTES for a small batch: the threads pack each weight block by rows,
    the next while multiplying by the current (or read them in place, see above).  Against the
    reference, and the same bits on one thread and on all, with the layer's workspace and
    without."""
    n_in = units = 2100
    assert n_in * units * 4 > OWN_B_BYTES
    x, w, b = _layer(np.random.default_rng(batch), batch, n_in, units, dtype)
    runs = []
    before = numba.get_num_threads()
    try:
        for nt, ws in ((numba.config.NUMBA_NUM_THREADS, None), (1, None),
                       (numba.config.NUMBA_NUM_THREADS,
                        np.full(kd.workspace_size(n_in, units, dtype), np.nan, dtype))):
            numba.set_num_threads(nt)
            z = np.empty((batch, units), dtype)
            y = np.empty((batch, units), dtype)
            kd.forward(x, w, b, act.RELU, z, y, ws)
            runs.append((z, y))
    finally:
        numba.set_num_threads(before)
    zref = _z_reference(x, w, b)
    tol = product_tolerance(x, w, dtype) + 4 * np.finfo(dtype).eps * np.abs(zref)
    assert np.all(np.abs(runs[0][0] - zref) <= tol)
    for z, y in runs[1:]:
        assert np.array_equal(z, runs[0][0]) and np.array_equal(y, runs[0][1])


@pytest.mark.parametrize("name", ["relu", "tanh", "softmax"])
@pytest.mark.parametrize("shape", [*SHAPES, (16, 40, 2100)],
                         ids=lambda s: "x".join(map(str, s)))
def test_workspace_gives_same_bits(name, shape, dtype):
    """The layer's workspace (``workspace_size``, NaN-filled) changes no bit of any output."""
    batch, n_in, units = shape
    code = activations.get(name).code
    outs = []
    for ws in (None, np.full(kd.workspace_size(n_in, units, dtype), np.nan, dtype)):
        x, w, b = _layer(np.random.default_rng(5), batch, n_in, units, dtype)
        z = np.empty((batch, units), dtype)
        y = np.empty((batch, units), dtype)
        g = np.random.default_rng(6).standard_normal((batch, units)).astype(dtype)
        dz, dw, db, dx = (np.empty_like(g), np.empty_like(w), np.empty_like(b), np.empty_like(x))
        if ws is None:
            kd.forward_for(code)(x, w, b, code, z, y)
            kd.backward(x, w, b, z, y, g, code, dz, dw, db, dx, 0.01, 0.0, 0.0, 0.0, 0.0, True)
        else:
            kd.forward_for(code)(x, w, b, code, z, y, ws)
            kd.backward(x, w, b, z, y, g, code, dz, dw, db, dx, 0.01, 0.0, 0.0, 0.0, 0.0, True,
                        ws)
        outs.append((y, dx, db, w))
    for a, b in zip(outs[0], outs[1], strict=True):
        assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("name", ["linear", "relu", "softmax", "tanh"])
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_row_entry_points_match_the_general_ones(name, shape, dtype):
    """``forward_rows`` gives the very bits of ``forward`` (the same FMA chain per output);
    ``backward_rows`` the same weight update and bias gradient, on 1 and on all threads, and
    with the threads from any size of weights (``threads_from`` 0) or from
    ``VECTOR_THREADS_BYTES``."""
    batch, n_in, units = shape
    code = activations.get(name).code
    rng = np.random.default_rng(11)
    x, w0, b0 = _layer(rng, batch, n_in, units, dtype)
    g = rng.standard_normal((batch, units)).astype(dtype)
    ws = np.empty(kd.workspace_size(n_in, units, dtype), dtype)
    before = numba.get_num_threads()
    results = []
    try:
        rows = kd.forward_for(code, rows=True)
        every = numba.config.NUMBA_NUM_THREADS
        for threads, forward, threads_from, backward in (
                (1, kd.forward_for(code), None, kd.backward),
                (1, rows, 0, kd.backward_rows),
                (every, rows, 0, kd.backward_rows),
                (every, rows, kd.rows_threads_from(False), kd.backward_rows)):
            numba.set_num_threads(threads)
            w, b = w0.copy(), b0.copy()
            z, y = np.empty((batch, units), dtype), np.empty((batch, units), dtype)
            if threads_from is None:
                forward(x, w, b, code, z, y, ws)
            else:
                forward(x, w, b, code, z, y, ws, threads_from)
            dz, dw, db, dx = (np.empty_like(g), np.empty_like(w), np.empty_like(b),
                              np.empty_like(x))
            backward(x, w, b, z, y, g, code, dz, dw, db, dx, 0.01, 0.0, 0.0, 0.0, 0.0, True, ws)
            results.append((z, y, w, b, db, dx))
    finally:
        numba.set_num_threads(before)
    if vector_block_rows(n_in, units, dtype) < n_in:
        # Larger weights: summed in row blocks (another order).
        zref = _z_reference(x, w0, b0)
        tol = product_tolerance(x, w0, dtype) + 4 * np.finfo(dtype).eps * np.abs(zref)
        assert np.all(np.abs(results[1][0] - zref) <= tol)
    else:
        for a, c in zip(results[0][:5], results[1][:5], strict=True):
            assert np.array_equal(a, c)
    for other in results[2:]:
        for a, c in zip(results[1], other, strict=True):
            assert np.array_equal(a, c)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("want_dx", [True, False], ids=["dx", "no-dx"])
@pytest.mark.parametrize("fuse_sgd, l1, l2", [(True, 0.0, 0.0), (True, 0.001, 0.01),
                                             (False, 0.0, 0.0)], ids=["sgd", "sgd-l1-l2", "grads"])
def test_row_backward_steps_give_the_general_weights(batch, want_dx, fuse_sgd, l1, l2, dtype):
    """``backward_rows`` writes or applies each row of the weight gradient by runs of rows
    (``_row_steps``: four rows after their dot products, or all rows without an input
    gradient), with the bits of ``backward``, with and without penalties."""
    rng = np.random.default_rng(batch)
    n_in, units = 37, 29
    x, w0, b0 = _layer(rng, batch, n_in, units, dtype)
    g = rng.standard_normal((batch, units)).astype(dtype)
    ws = np.empty(kd.workspace_size(n_in, units, dtype), dtype)
    out = []
    for backward in (kd.backward, kd.backward_rows):
        w, b = w0.copy(), b0.copy()
        dw = np.full_like(w, np.nan)
        dx = np.empty((batch if want_dx else 0, n_in), dtype)
        backward(x, w, b, g, g, g, act.LINEAR, np.empty_like(g), dw, np.empty_like(b), dx,
                 0.01, l1, l2, 0.0, 0.0, fuse_sgd, ws)
        out.append(w if fuse_sgd else dw)
    assert np.array_equal(out[0], out[1])
    assert not np.array_equal(out[1], w0 if fuse_sgd else np.zeros_like(w0))


def test_row_entry_points_refuse_a_short_workspace(dtype):
    """Compiled without Numba's runtime, ``forward_rows`` and ``backward_rows`` cannot allocate:
    a workspace too short raises ``ValueError`` before the weights or outputs change."""
    rng = np.random.default_rng(5)
    x, w, b = _layer(rng, 1, 300, 600, dtype)
    w0 = w.copy()
    g = rng.standard_normal((1, 600)).astype(dtype)
    z, y = np.full((1, 600), 7, dtype), np.full((1, 600), 7, dtype)
    short = np.empty(10, dtype)
    with pytest.raises(ValueError, match="workspace is too short"):
        kd.forward_rows(x, w, b, act.RELU, z, y, short, 0)
    assert np.all(z == 7) and np.all(y == 7)
    kd.forward_rows(x, w, b, act.RELU, z, y, np.empty(kd.workspace_size(300, 600, dtype), dtype),
                    0)
    dz, dw, db, dx = (np.empty_like(g), np.empty_like(w), np.empty_like(b), np.empty_like(x))
    with pytest.raises(ValueError, match="workspace is too short"):
        kd.backward_rows(x, w, b, z, y, g, act.RELU, dz, dw, db, dx, 0.1, 0.0, 0.0, 0.0, 0.0,
                         True, short)
    assert np.array_equal(w, w0)


# Inputs (rows of dw): 70 = 11 x 6 + 4 (a 4-row tile for the last rows), 31 and 9 (a packed
# partial row panel: whole-width tiles then stored by _store_tile, as are the edge columns).
@pytest.mark.parametrize("n_in", [70, 31, 9])
@pytest.mark.parametrize("batch", [37, 600, 1100], ids=["1-block", "2-blocks", "3-blocks"])
@pytest.mark.parametrize("name", ["linear", "relu"])
def test_fused_sgd_gives_the_bits_of_gradient_then_update(name, batch, n_in, dtype):
    """Plain SGD fused into the ``dw`` tile stores (after one KC block of the batch or after
    several, on full and edge tiles) gives exactly ``w - lr * dw`` of the unfused pass."""
    units = 45  # full and edge tiles in both directions, for both dtypes
    code = activations.get(name).code
    rng = np.random.default_rng(batch)
    x, w0, b0 = _layer(rng, batch, n_in, units, dtype)
    g = rng.standard_normal((batch, units)).astype(dtype)
    z, y = np.empty((batch, units), dtype), np.empty((batch, units), dtype)
    kd.forward_for(code)(x, w0, b0, code, z, y)
    dz, dw, db, dx = (np.empty_like(g), np.empty_like(w0), np.empty_like(b0), np.empty_like(x))
    kd.backward(x, w0, b0, z, y, g, code, dz, dw, db, dx, 0.0, 0.0, 0.0, 0.0, 0.0, False)
    lr = 0.037
    # ``w[j] -= lr * dw[j]``: float64 arithmetic, rounded to the weights' dtype.
    w_ref = (w0.astype(np.float64) - lr * dw.astype(np.float64)).astype(dtype)
    b_ref = (b0.astype(np.float64) - lr * db.astype(np.float64)).astype(dtype)
    w, b = w0.copy(), b0.copy()
    kd.backward(x, w, b, z, y, g, code, dz, dw, db, dx, lr, 0.0, 0.0, 0.0, 0.0, True)
    assert np.array_equal(w, w_ref)
    assert np.array_equal(b, b_ref)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 40, 255, 1024])
def test_dots_4_gives_the_bits_of_one_row_at_a_time(n, dtype):
    """Four rows' dot products at a time keep each row's order: the bits of ``dots_1``, for
    any remainder of the 16 lanes, within the reduction's error bound, and nothing else
    written."""
    from fastdense.kernels._microkernels import dots_1, dots_4

    rng = np.random.default_rng(n)
    u = rng.standard_normal(n).astype(dtype)
    w = rng.standard_normal((6, n)).astype(dtype)
    lanes = np.empty(kd._LANES, dtype)
    four = np.full(6, np.nan, dtype)
    dots_4(u, w, 1, four, lanes)
    assert np.isnan(four[0]) and np.isnan(four[5])
    one = np.full(6, np.nan, dtype)
    for p in range(1, 5):
        dots_1(u, w, p, one, lanes)
    np.testing.assert_array_equal(four.view(np.uint8), one.view(np.uint8))
    exact = w[1:5].astype(np.float64) @ u.astype(np.float64)
    assert np.all(np.abs(four[1:5] - exact) <= product_tolerance(w[1:5], u[:, None], dtype)[:, 0])


# Layers of few units: the forward product by dot products (``kd.forward_dots``, in groups
# ``kd.forward_unit_dots``).
# Shapes: one row; rows in whole blocks of four and with a tail; no whole lane block (1 and 15
# inputs), exactly one, one and a remainder; enough work for the threads (DOTS_SERIAL_WORK);
# units in groups of four (``_tiles._unit_dots``), with a unit of zeros added to three, seven,
# and one or two units left over (the kernel takes any number; ``uses_dots`` says which layers
# it serves).
DOTS_SHAPES = [(1, 784, 1), (2, 15, 2), (3, 1, 1), (4, 16, 2), (37, 17, 1), (70, 33, 2),
               (600, 130, 1), (1030, 200, 2), (5, 31, 3), (8, 16, 4), (37, 49, 7),
               (70, 100, 6), (9, 64, 5), (1030, 200, 4), (600, 130, 3)]
assert max(b * k * n for b, k, n in DOTS_SHAPES) > 2 * kd.DOTS_SERIAL_WORK


def _dots_tolerance(x, w, b, dtype):
    """Bound on ``|z - x @ w - b|`` for ``forward_dots``' order (``tests.bounds.dots_bound``)
    and the smallest normal number."""
    return dots_bound(x, w, b, dtype) + np.finfo(dtype).tiny


def _forward_dots(x, w, b, code, z, y, threads=None, kernel=None):
    """The dot products' kernel for the units (``forward_for``), or ``kernel``."""
    ws = np.empty(kd.dots_workspace_size(x.shape[0], x.shape[1], w.shape[1],
                                         numba.config.NUMBA_NUM_THREADS), x.dtype)
    kernel = kernel or kd.forward_for(code, dots=w.shape[1])
    with fastdense.threads(threads or numba.config.NUMBA_NUM_THREADS):
        kernel(x, w, b, code, z, y, ws)


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", DOTS_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_dots_against_the_reference(shape, name, use_bias, dtype):
    """``z = x @ w + b`` within the bound of the dot products' order, ``y = act(z)``, for every
    activation, with ``z`` and ``y`` apart or the same array."""
    batch, n_in, units = shape
    rng = np.random.default_rng(batch * 7 + n_in)
    x, w, b = _layer(rng, batch, n_in, units, dtype, use_bias)
    code = activations.get(name).code
    z = np.full((batch, units), np.nan, dtype)
    y = np.full((batch, units), np.nan, dtype)
    _forward_dots(x, w, b, code, z, y)
    zref = _z_reference(x, w, b)
    tol = _dots_tolerance(x, w, b, dtype)
    assert np.all(np.abs(z - zref) <= tol)
    yref = reference.act_forward(name, zref)
    ytol = LIPSCHITZ * tol + 8 * np.finfo(dtype).eps * (np.abs(yref) + 1)
    assert np.all(np.abs(y - yref) <= ytol)
    same = np.full((batch, units), np.nan, dtype)
    _forward_dots(x, w, b, code, same, same)
    assert np.array_equal(same, y, equal_nan=True)


def test_forward_dots_tolerance_can_fail(dtype):
    """The bound above is tight enough to catch a product summed in the wrong precision or
    missing its last input."""
    rng = np.random.default_rng(5)
    x, w, b = _layer(rng, 70, 33, 2, dtype)
    z = np.empty((70, 2), dtype)
    _forward_dots(x, w, b, act.LINEAR, z, z)
    tol = _dots_tolerance(x, w, b, dtype)
    short = (x[:, :-1].astype(np.float64) @ w[:-1].astype(np.float64) + b).astype(dtype)
    assert not np.all(np.abs(short - _z_reference(x, w, b)) <= tol)
    if dtype == np.float64:
        single = (x.astype(np.float32) @ w.astype(np.float32) + b.astype(np.float32))
        assert not np.all(np.abs(single - _z_reference(x, w, b)) <= tol)


@pytest.mark.parametrize("shape", [(1030, 200, 2), (600, 130, 1), (37, 17, 1), (1030, 200, 4),
                                   (37, 49, 7)],
                         ids=lambda s: "x".join(map(str, s)))
def test_forward_dots_bits_are_each_rows_own(shape, dtype):
    """A row's outputs have the same bits whatever the batch around it (alone, in another
    block of four, in the tail), the thread count and the run; NaN stays in its row."""
    batch, n_in, units = shape
    rng = np.random.default_rng(9)
    x, w, b = _layer(rng, batch, n_in, units, dtype)
    x[batch // 2, n_in // 3] = np.nan
    runs = []
    for threads in (1, None, None):
        z = np.empty((batch, units), dtype)
        _forward_dots(x, w, b, act.RELU, z, z, threads)
        runs.append(z)
    for other in runs[1:]:
        assert np.array_equal(runs[0], other, equal_nan=True)
    z = runs[0]
    assert np.isnan(z[batch // 2]).all()
    assert np.isfinite(np.delete(z, batch // 2, axis=0)).all()
    for lo in (1, 3):
        shifted = np.empty((batch - lo, units), dtype)
        _forward_dots(np.ascontiguousarray(x[lo:]), w, b, act.RELU, shifted, shifted)
        assert np.array_equal(shifted, z[lo:], equal_nan=True)
    for i in (0, batch - 1):
        alone = np.empty((1, units), dtype)
        _forward_dots(np.ascontiguousarray(x[i:i + 1]), w, b, act.RELU, alone, alone)
        assert np.array_equal(alone, z[i:i + 1])


@pytest.mark.parametrize("units", [2, 3])
def test_forward_dots_refuses_a_short_workspace(units, dtype):
    """Compiled without Numba's runtime, the kernels cannot allocate: a workspace shorter than
    ``dots_workspace_size`` raises ``ValueError`` before any output is written."""
    rng = np.random.default_rng(2)
    x, w, b = _layer(rng, 600, 130, units, dtype)
    z = np.full((600, units), np.nan, dtype)
    threads = numba.config.NUMBA_NUM_THREADS
    kernel = kd.forward_for(act.RELU, dots=units)
    short = np.empty(kd.dots_workspace_size(600, 130, units, 1) - 1, dtype)
    with pytest.raises(ValueError, match="workspace"):
        kernel(x, w, b, act.RELU, z, z, short)
    assert np.isnan(z).all()
    kernel(x, w, b, act.RELU, z, z,
           np.empty(kd.dots_workspace_size(600, 130, units, threads), dtype))
    assert np.isfinite(z).all()


@pytest.mark.parametrize("shape", [(37, 49, 7), (1030, 200, 4), (9, 64, 5)],
                         ids=lambda s: "x".join(map(str, s)))
def test_forward_dots_bits_are_each_units_own(shape, dtype):
    """A unit's outputs have the same bits whatever the units beside it: a layer of several
    units (``forward_unit_dots``: four at a time, with a unit of zeros added to three) gives
    the bits of the layers of its units alone, and of ``forward_dots`` (a unit at a time)."""
    batch, n_in, units = shape
    rng = np.random.default_rng(12)
    x, w, b = _layer(rng, batch, n_in, units, dtype)
    z = np.empty((batch, units), dtype)
    _forward_dots(x, w, b, act.LINEAR, z, z)
    for j in range(units):
        alone = np.empty((batch, 1), dtype)
        _forward_dots(x, np.ascontiguousarray(w[:, j:j + 1]), b[j:j + 1], act.LINEAR, alone,
                      alone)
        np.testing.assert_array_equal(alone[:, 0].view(np.uint8), z[:, j].copy().view(np.uint8))
    apart = np.empty((batch, units), dtype)
    _forward_dots(x, w, b, act.LINEAR, apart, apart, kernel=kd.forward_dots)
    np.testing.assert_array_equal(apart.view(np.uint8), z.view(np.uint8))


@pytest.mark.parametrize("n", [1, 15, 16, 17, 64, 255, 784])
def test_dots_4x4_gives_the_bits_of_a_unit_at_a_time(n):
    """Four units' dot products with four rows at once keep each product's order: the bits of
    ``dots_4`` a unit at a time, writing nothing else."""
    from fastdense.kernels._microkernels import dots_4, dots_4x4

    rng = np.random.default_rng(n)
    x = rng.standard_normal((6, n)).astype(np.float32)
    w = rng.standard_normal(4 * n).astype(np.float32)
    m = 7
    group = np.full(4 * m, np.nan, np.float32)
    dots_4x4(w, x, 1, group, m, np.empty(kd._DOTS_LANES, np.float32))
    apart = np.full(4 * m, np.nan, np.float32)
    for u in range(4):
        dots_4(w[u * n:(u + 1) * n], x, 1, apart[u * m:(u + 1) * m],
               np.empty(kd._LANES, np.float32))
    np.testing.assert_array_equal(group.view(np.uint8), apart.view(np.uint8))
    assert np.isnan(group.reshape(4, m)[:, [0, 5, 6]]).all()


def test_forward_for_takes_dot_products_for_few_units():
    """``uses_dots``: up to ``DOT_UNITS_MAX`` units of the dtype, whatever the batch;
    ``forward_for(..., dots=True)`` hands out ``forward_dots`` before the row and few-unit
    kernels, softmax included."""
    for dtype in (np.float32, np.float64):
        most = kd.DOT_UNITS_MAX[np.dtype(dtype).name]
        assert kd.uses_dots(1, dtype) and kd.uses_dots(most, dtype)
        assert not kd.uses_dots(0, dtype) and not kd.uses_dots(most + 1, dtype)
    assert kd.DOT_UNITS_MAX["float64"] == 2
    assert kd.DOT_UNITS_MAX["float32"] == (4 if TILES == "avx512" else 2)
    # Layers of one or two units never compile the groups' kernel (``forward_unit_dots``).
    assert kd.forward_for(act.RELU, dots=1) is kd.forward_dots
    assert kd.forward_for(act.RELU, dots=2) is kd.forward_dots
    for units in (3, 4, 5, 7):
        assert kd.forward_for(act.SOFTMAX, True, True, dots=units) is kd.forward_unit_dots
    for code in (act.RELU, act.SOFTMAX, act.TANH):
        for rows, narrow in ((False, False), (True, False), (False, True)):
            assert kd.forward_for(code, rows, narrow, dots=1) is kd.forward_dots
    assert kd.forward_for(act.RELU, False, True) is kd.forward_narrow


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fuse_sgd, l2", [(True, 0.0), (True, 0.01), (False, 0.0)])
@pytest.mark.parametrize("rows", [(0, 11), (3, 20), (8, 9)], ids=["0-11", "3-20", "8-9"])
def test_rows_backward_four_rows_or_one_give_the_same_bits(batch, fuse_sgd, l2, rows, dtype):
    """The batch-1 backward pass over rows ``p0:p1``, four rows' input gradients at a time or
    one: the same ``dx``, the same updated weights (or ``dw``), and nothing outside the rows."""
    p0, p1 = rows
    n_in, units = 20, 37
    rng = np.random.default_rng(p1)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    w0 = rng.standard_normal((n_in, units)).astype(dtype)
    d = rng.standard_normal((batch, units)).astype(dtype)
    outs = []
    for four in (False, True):
        w = w0.copy()
        dx = np.full((batch, n_in), np.nan, dtype)
        dw = np.full((n_in, units), np.nan, dtype)
        kd._rows_backward(x, w, d, dx, dw, p0, p1, True, fuse_sgd, 0.1, 0.0, l2, four,
                          np.empty(kd._LANES, dtype))
        outs.append((w, dx, dw))
    for a, b in zip(outs[0], outs[1], strict=True):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    w, dx, dw = outs[1]
    exact = d.astype(np.float64) @ w0[p0:p1].astype(np.float64).T
    assert np.all(np.abs(dx[:, p0:p1] - exact)
                  <= product_tolerance(d, w0[p0:p1].T, dtype))
    assert np.isnan(dx[:, :p0]).all() and np.isnan(dx[:, p1:]).all()
    xs = x[:, p0:p1].T
    grad = xs.astype(np.float64) @ d.astype(np.float64)
    grad_tol = product_tolerance(xs, d, dtype)
    if fuse_sgd:
        assert np.array_equal(w[:p0], w0[:p0]) and np.array_equal(w[p1:], w0[p1:])
        ref = w0[p0:p1] - 0.1 * (grad + 2 * l2 * w0[p0:p1])
        tol = 0.1 * grad_tol + 4 * np.finfo(dtype).eps * np.abs(ref)
        assert np.all(np.abs(w[p0:p1] - ref) <= tol)
    else:
        assert np.array_equal(w, w0)
        assert np.all(np.abs(dw[p0:p1] - grad) <= grad_tol)
        assert np.isnan(dw[:p0]).all() and np.isnan(dw[p1:]).all()


# Layers of few units (``kd.is_narrow``: at most half the tile's columns) run their forward
# product and weight gradient by row tiles (``narrow.narrow_product``).  Shapes: units of the
# tiles of 256-bit rows (3, 5 in float32, 4 in float64) and of the 6-row tiles (10, 16: float32
# only, up to half the AVX-512 tile's columns); batches of partial row panels, one over KC (the
# weight gradient's reduction in two KC blocks) and one over DIRECT_ROWS (the input gradient
# by rows); inputs over KC (the forward reduction in two blocks) and of a partial last
# block.  Units above half the tile's columns (float64: 8 with
# the AVX-512 tiles, 4 with the AVX2 ones) are cut to that half.  Layers of one and two units
# (the weight gradient by strips): a batch over KC, on the threads, and inputs of a partial
# strip in either dtype.
NARROW_SHAPES = [(37, 70, 3), (130, 300, 5), (600, 40, 10), (64, 1030, 10), (1024, 33, 16),
                 (3, 200, 5), (45, 520, 4), (600, 500, 1), (37, 200, 2)]


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("fuse_sgd, l2", [(True, 0.0), (True, 0.01), (False, 0.0)],
                         ids=["sgd", "sgd-l2", "grads"])
@pytest.mark.parametrize("name", ["linear", "relu", "softmax", "gelu"])
@pytest.mark.parametrize("shape", NARROW_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_narrow_entry_points_give_the_bits_of_the_general_ones(shape, name, fuse_sgd, l2,
                                                               use_bias, dtype):
    """``forward_narrow`` and ``backward_narrow_for``'s kernel give the very bits of
    ``forward`` and ``backward``: outputs, input gradient, weight update or gradient, bias
    gradient; on one thread and on all."""
    batch, n_in, units = shape
    units = min(units, kd.BLOCKING[np.dtype(dtype).name][1] // 2)
    assert kd.is_narrow(units, dtype)
    act_ = activations.get(name)
    act_.prepare(dtype)
    code = act_.code
    rng = np.random.default_rng(batch + units)
    x, w0, b0 = _layer(rng, batch, n_in, units, dtype, use_bias)
    g = rng.standard_normal((batch, units)).astype(dtype)
    ws = np.empty(kd.narrow_workspace_size(batch, n_in, units, dtype), dtype)
    before = numba.get_num_threads()
    results = []
    try:
        all_threads = numba.config.NUMBA_NUM_THREADS
        for threads, narrow in ((1, False), (1, True), (all_threads, True)):
            numba.set_num_threads(threads)
            w, b = w0.copy(), b0.copy()
            z, y = np.full((batch, units), np.nan, dtype), np.full((batch, units), np.nan, dtype)
            kd.forward_for(code, narrow=narrow)(x, w, b, code, z, y, ws)
            dz, dw, db, dx = (np.empty_like(g), np.full_like(w, np.nan), np.empty_like(b),
                              np.empty_like(x))
            backward = (kd.backward_narrow_for(batch, n_in, units, dtype) if narrow
                        else kd.backward)
            backward(x, w, b, z, y, g, code, dz, dw, db, dx, 0.01, 0.0, l2, 0.0, 0.0, fuse_sgd,
                     ws)
            results.append((z, y, dx, w if fuse_sgd else dw, b if fuse_sgd else db))
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other, strict=True):
            assert np.array_equal(a, c)
    zref = _z_reference(x, w0, b0)
    tol = product_tolerance(x, w0, dtype) + 4 * np.finfo(dtype).eps * np.abs(zref)
    assert np.all(np.abs(results[1][0] - zref) <= tol)


@pytest.mark.parametrize("fuse_sgd, l2", [(True, 0.0), (True, 0.01), (False, 0.0)],
                         ids=["sgd", "sgd-l2", "grads"])
@pytest.mark.parametrize("shape, by", [
    (shape, by) for shape in NARROW_SHAPES for by in ("transposed", "strips", "unit_strips")
    if by == "strips" or shape[2] > kd.STRIPS_UNITS],
    ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)))
def test_weight_gradient_transposed_or_by_strips_gives_the_bits_of_the_general_one(
        shape, by, fuse_sgd, l2, dtype):
    """The weight gradient of few-unit layers transposed (``dw.T = dz.T @ x``), which
    ``backward_narrow_for`` picks for float32 layers of 3 to MR units, or by strips (picked
    for one or two units, here for every layer), or by strips of three or four units at once
    (picked up to ``STRIPS_UNITS_MAX`` units; here groups of four, then of three, then single
    units: 5 units are a group and one, 10 two groups and two) gives ``backward``'s weights or
    gradient in either dtype, on one thread and on all.  (Transposed, a layer of one or two
    units would take the direct path, whose reduction over the batch is one FMA chain, not KC
    blocks.)"""
    batch, n_in, units = shape
    units = min(units, kd.BLOCKING[np.dtype(dtype).name][1] // 2)
    rng = np.random.default_rng(batch + units)
    x, w0, b = _layer(rng, batch, n_in, units, dtype)
    g = rng.standard_normal((batch, units)).astype(dtype)
    z = np.empty_like(g)
    w, dw = w0.copy(), np.full_like(w0, np.nan)
    kd.backward(x, w, b, z, z, g, act.LINEAR, np.empty_like(g), dw, np.empty_like(b),
                np.empty((0, n_in), dtype), 0.01, 0.0, l2, 0.0, 0.0, fuse_sgd)
    expected = w if fuse_sgd else dw
    if by == "transposed":
        kernel = kd._weight_grad_transposed
    else:
        grouped = True if by == "unit_strips" else None

        def kernel(*args):
            kd._weight_grad_strips(*args, grouped)
    before = numba.get_num_threads()
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            w, dw = w0.copy(), np.full_like(w0, np.nan)
            ws = np.empty(kd.narrow_workspace_size(batch, n_in, units, dtype), dtype)
            kernel(x, w, g, dw, fuse_sgd, 0.01, 0.0, l2, ws)
            assert np.array_equal(w if fuse_sgd else dw, expected)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("fuse_sgd", [True, False], ids=["sgd", "grads"])
def test_every_narrow_backward_variant_gives_the_bits_of_backward(fuse_sgd, dtype):
    """The eight variants of ``backward_narrow`` (input gradient by rows or as a product,
    weight gradient by row tiles, transposed, by strips or by strips of several units) give
    ``backward``'s bits at a batch below and one above ``DIRECT_ROWS``."""
    n_in, units, code = 70, 3, act.RELU
    for batch in (37, kd.DIRECT_ROWS + 44):
        rng = np.random.default_rng(batch)
        x, w0, b0 = _layer(rng, batch, n_in, units, dtype)
        z = x @ w0 + b0
        g = rng.standard_normal((batch, units)).astype(dtype)
        ws = np.empty(kd.narrow_workspace_size(batch, n_in, units, dtype), dtype)
        outs = []
        kernels = [kd.backward, *kd._BACKWARD_NARROW.values()]
        assert len(set(kernels)) == 9
        for backward in kernels:
            w, b = w0.copy(), b0.copy()
            dz, dw, db, dx = (np.empty_like(g), np.full_like(w, np.nan), np.empty_like(b),
                              np.empty_like(x))
            backward(x, w, b, z, z, g, code, dz, dw, db, dx, 0.01, 0.0, 0.0, 0.0, 0.0, fuse_sgd,
                     ws)
            outs.append((dx, w if fuse_sgd else dw, b if fuse_sgd else db))
        for other in outs[1:]:
            for a, c in zip(outs[0], other, strict=True):
                assert np.array_equal(a, c)


def test_backward_narrow_for_picks_by_batch_inputs_units_and_dtype():
    """The input gradient, when wanted, by rows for layers of one or two units, of
    ROWS_DX_INPUTS inputs or more, or above DIRECT_ROWS rows; the weight gradient by strips for
    one or two units, by strips of several units up to STRIPS_UNITS_MAX (four with the AVX-512
    tiles), transposed for float32 layers of at most MR units."""
    wide = kd.ROWS_DX_INPUTS
    for dtype in ("float32", "float64"):
        mr = kd.BLOCKING[dtype][0]
        most = kd.STRIPS_UNITS_MAX[dtype]
        assert most == (4 if TILES == "avx512" else kd.STRIPS_UNITS)
        for units in (1, kd.STRIPS_UNITS, 3, 4, 5, mr, mr + 1):
            dw_by = ("strips" if units <= kd.STRIPS_UNITS
                     else "unit_strips" if units <= most
                     else "transposed" if dtype == "float32" and units <= mr else "tiles")
            few = units <= kd.STRIPS_UNITS
            for batch, n_in, want_dx, rows in ((kd.DIRECT_ROWS, wide - 1, True, few),
                                               (kd.DIRECT_ROWS, wide, True, True),
                                               (kd.DIRECT_ROWS + 1, wide - 1, True, True),
                                               (kd.DIRECT_ROWS + 1, wide, False, False)):
                assert (kd.backward_narrow_for(batch, n_in, units, dtype, want_dx)
                        is kd._BACKWARD_NARROW[rows, dw_by])


def test_product_paths():
    """Batches of one or two take the row entry points, few-unit layers their own kernels."""
    assert kd.product_paths(1024, 784, 4, np.float32) == (False, True)
    assert kd.product_paths(32, 784, 10, np.float32) == (False, kd.is_narrow(10, np.float32))
    assert kd.product_paths(1024, 784, 100, np.float32) == (False, False)
    assert kd.product_paths(2, 784, 10, np.float32) == (True, False)


def test_narrow_rule():
    """Few units have their kernels: at most half of the tile's columns, from one unit, for
    more than two rows and inputs, however small the work."""
    for dtype in (np.float32, np.float64):
        nr = kd.BLOCKING[np.dtype(dtype).name][1]
        assert kd.is_narrow(nr // 2, dtype) and not kd.is_narrow(nr // 2 + 1, dtype)
        assert not kd.is_narrow(0, dtype)
        assert kd.uses_narrow(1024, 784, 3, dtype)
        assert kd.uses_narrow(1024, 784, 2, dtype) and kd.uses_narrow(1024, 784, 1, dtype)
        assert kd.uses_narrow(3, 3, 1, dtype)
        # The direct path's work over more than KC inputs or rows: its single FMA chain.
        kc = kd.BLOCKING[np.dtype(dtype).name][2]
        assert kd.uses_narrow(3, kc, 1, dtype) and kd.uses_narrow(kc, 3, 1, dtype)
        assert not kd.uses_narrow(3, kc + 1, 1, dtype) and not kd.uses_narrow(kc + 1, 3, 1, dtype)
        assert not kd.uses_narrow(2, 784, 3, dtype)
        assert not kd.uses_narrow(1024, 2, 3, dtype)
    assert kd.uses_narrow(1024, 784, 10, np.float32) == (kd.BLOCKING["float32"][1] >= 20)


@pytest.mark.parametrize("units", [1, 3])
def test_narrow_entry_points_with_a_short_workspace(units, dtype):
    """A workspace too short for the transposed result (or the strips' buffers) still gives
    the bits (the kernels then allocate it)."""
    batch, n_in = 70, 130
    code = act.RELU
    rng = np.random.default_rng(4)
    x, w0, b0 = _layer(rng, batch, n_in, units, dtype)
    g = rng.standard_normal((batch, units)).astype(dtype)
    outs = []
    for ws in (np.empty(kd.narrow_workspace_size(batch, n_in, units, dtype), dtype),
               np.empty(8, dtype)):
        w, b = w0.copy(), b0.copy()
        z = np.empty((batch, units), dtype)
        kd.forward_narrow(x, w, b, code, z, z, ws)
        dz, dw, db, dx = (np.empty_like(g), np.empty_like(w), np.empty_like(b),
                          np.empty_like(x))
        backward = kd.backward_narrow_for(batch, n_in, units, dtype)
        backward(x, w, b, z, z, g, code, dz, dw, db, dx, 0.1, 0.0, 0.0, 0.0, 0.0, True, ws)
        outs.append((z, dx, w, b))
    for a, c in zip(*outs, strict=True):
        assert np.array_equal(a, c)


# Layers on the general kernels of few units (at most SHORT_DX_UNITS) take their input
# gradient by rows above DIRECT_ROWS rows (``kd.backward_dx_by_rows``).  Shapes: units above
# the few-unit kernels' (so the general kernels' in every tile set) and at the limit; rows over
# KC (the weight gradient in two KC blocks); inputs of a partial strip.
SHORT_DX_SHAPES = [(300, 70, 12), (600, 130, 9), (kd.DIRECT_ROWS + 1, 300, 11)]


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("fuse_sgd, l2", [(True, 0.0), (True, 0.01), (False, 0.0)],
                         ids=["sgd", "sgd-l2", "grads"])
@pytest.mark.parametrize("name", ["linear", "relu", "softmax", "gelu"])
@pytest.mark.parametrize("shape", SHORT_DX_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backward_with_the_input_gradient_by_rows_gives_the_bits_of_backward(
        shape, name, fuse_sgd, l2, use_bias, dtype):
    """``backward_dx_by_rows`` gives ``backward``'s bits: input gradient, weight update or
    gradient, bias gradient; on one thread and on all; with a layer's workspace, whose end
    holds the transposed weights, or a short one (the kernel then allocates that end)."""
    batch, n_in, units = shape
    act_ = activations.get(name)
    act_.prepare(dtype)
    code = act_.code
    rng = np.random.default_rng(batch + units)
    x, w0, b0 = _layer(rng, batch, n_in, units, dtype, use_bias)
    z, y = np.empty((batch, units), dtype), np.empty((batch, units), dtype)
    kd.forward_for(code)(x, w0, b0, code, z, y)
    g = rng.standard_normal((batch, units)).astype(dtype)
    before = numba.get_num_threads()
    results = []
    try:
        for kernel, threads, ws_len in (
                (kd.backward, 1, kd.workspace_size(n_in, units, dtype)),
                (kd.backward_dx_by_rows, 1, kd.workspace_size(n_in, units, dtype)),
                (kd.backward_dx_by_rows, numba.config.NUMBA_NUM_THREADS,
                 kd.workspace_size(n_in, units, dtype)),
                (kd.backward_dx_by_rows, numba.config.NUMBA_NUM_THREADS, 8)):
            numba.set_num_threads(threads)
            w, b = w0.copy(), b0.copy()
            dz, dw, db, dx = (np.empty_like(g), np.full_like(w, np.nan), np.empty_like(b),
                              np.empty_like(x))
            kernel(x, w, b, z, y, g, code, dz, dw, db, dx, 0.01, 0.0, l2, 0.0, 0.0, fuse_sgd,
                   np.empty(ws_len, dtype))
            results.append((dx, w if fuse_sgd else dw, b if fuse_sgd else db))
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other, strict=True):
            assert np.array_equal(a, c)


def test_backward_for_picks_by_batch_units_and_input_gradient():
    """Layers on the general kernels take their input gradient by rows for at most
    SHORT_DX_UNITS units above DIRECT_ROWS rows, when it is wanted."""
    units = kd.SHORT_DX_UNITS
    for dtype in ("float32", "float64"):
        assert kd.backward_for(kd.DIRECT_ROWS + 1, 784, units, dtype) is kd.backward_dx_by_rows
        assert kd.backward_for(kd.DIRECT_ROWS, 784, units, dtype) is kd.backward
        assert kd.backward_for(kd.DIRECT_ROWS + 1, 784, units + 1, dtype) is kd.backward
        assert kd.backward_for(kd.DIRECT_ROWS + 1, 784, units, dtype, False) is kd.backward
