"""The activation passes: their bits, the table the product kernels read, and installation."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from numba import from_dtype, njit

import fastdense as fd
from fastdense.kernels import activation as act
from fastdense.kernels import activation_passes as passes
from fastdense.kernels import dense as kdense
from fastdense.kernels.pack import dz_rows
from tests.helpers import assert_same_bits, generic_derivative

CODES = sorted(passes.CODES_WITH_PASSES)


# Not cached: Numba would date a cached copy by this file alone.
@njit
def _generic_values(y, i0, rows, j0, ncols, code):
    for i in range(i0, i0 + rows):
        for j in range(j0, j0 + ncols):
            y[i, j] = act.apply(code, y[i, j])


def _values(dtype, code, m=23, n=67):
    rng = np.random.default_rng(code)
    z = (rng.standard_normal((m, n)) * 4).astype(dtype)
    z.flat[:9] = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, -1e-40, 200.0, -200.0],
                          dtype=dtype)
    return z


@contextlib.contextmanager
def _entry(kind, dtype, code, address):
    """Table entry ``(kind, dtype, code)`` set to ``address`` for the duration."""
    index = passes.table_index(kind, np.dtype(dtype).itemsize, code)
    saved = passes.TABLE[index]
    passes.TABLE[index] = address
    try:
        yield
    finally:
        passes.TABLE[index] = saved


def _address(kind, dtype, code):
    passes.install(code, dtype)
    return passes.TABLE[passes.table_index(kind, np.dtype(dtype).itemsize, code)]


@pytest.mark.parametrize("code", CODES)
def test_values_pass_gives_the_generic_bits_on_its_block_only(dtype, code):
    y = _values(dtype, code)
    want = y.copy()
    _generic_values(want, 3, 11, 5, 50, code)
    sig = passes.values_signature(from_dtype(np.dtype(dtype)))
    values = passes.values_pass(code)
    values.compile(sig)
    values(y, 3, 11, 5, 50)
    assert_same_bits(y, want)


@pytest.mark.parametrize("code", CODES)
def test_derivative_pass_gives_the_generic_bits_on_its_block_only(dtype, code):
    z = _values(dtype, code)
    y = z.copy()
    _generic_values(y, 0, y.shape[0], 0, y.shape[1], code)
    g = np.random.default_rng(1).standard_normal(z.shape).astype(dtype)
    want = np.full((30, 60), 7.0, dtype)
    generic_derivative(g[4:15, 6:40], z[4:15, 6:40], y[4:15, 6:40], code, want[2:13, 9:43])
    got = np.full_like(want, 7.0)
    derivative = passes.derivative_pass(code)
    derivative.compile(passes.derivative_signature(from_dtype(np.dtype(dtype))))
    derivative(g, z, y, 4, 11, 6, 34, got, 2, 9)
    assert_same_bits(got, want)


def _forward(x, w, code):
    y = np.empty((x.shape[0], w.shape[1]), x.dtype)
    z = np.empty_like(y)
    ws = np.empty(kdense.workspace_size(w.shape[0], w.shape[1], x.dtype), x.dtype)
    kdense.forward(x, w, np.zeros(w.shape[1], x.dtype), code, z, y, ws)
    return y


def test_product_kernels_call_the_pass_in_the_table(dtype):
    """GELU's entry pointing at tanh's pass makes a GELU forward give tanh's values: the
    kernels call what the table holds."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 30)).astype(dtype)
    w = rng.standard_normal((30, 20)).astype(dtype)
    tanh = _forward(x, w, act.TANH)
    gelu = _forward(x, w, act.GELU)
    assert not np.array_equal(tanh, gelu)
    with _entry(passes.VALUES, dtype, act.GELU, _address(passes.VALUES, dtype, act.TANH)):
        assert_same_bits(_forward(x, w, act.GELU), tanh)


@pytest.mark.parametrize("kind", [passes.VALUES, passes.DERIVATIVE])
def test_layer_kernels_refuse_an_activation_without_passes(dtype, kind):
    """Before they write anything; and the product kernels, which cannot raise from their
    threads, write NaN rather than values without the activation."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 30)).astype(dtype)
    w = rng.standard_normal((30, 20)).astype(dtype)
    z = _values(dtype, act.GELU)
    g = rng.standard_normal(z.shape).astype(dtype)
    with _entry(kind, dtype, act.GELU, 0):
        for rows in (40, 1):
            y = np.full((rows, 20), 7.0, dtype)
            ws = np.empty(kdense.workspace_size(30, 20, dtype), dtype)
            forward = kdense.forward_for(act.GELU, rows == 1)
            args = (x[:rows], w, np.zeros(20, dtype), act.GELU, y, y, ws)
            with pytest.raises(ValueError, match="no compiled passes"):
                forward(*args, 0) if rows == 1 else forward(*args)
            assert np.all(y == 7.0)
        with pytest.raises(ValueError, match="no compiled passes"):
            y = np.empty((40, 20), dtype)
            kdense.backward(x, w, np.zeros(20, dtype), y, y, np.ones((40, 20), dtype), act.GELU,
                            np.empty((40, 20), dtype), np.empty((30, 20), dtype),
                            np.empty(20, dtype), np.empty((40, 30), dtype), 0.0, 0.0, 0.0,
                            0.0, 0.0, False, ws)
        dz = np.zeros_like(z)
        dz_rows(g, z, z, act.GELU, 0, z.shape[0], 0, z.shape[1], dz, 0, 0)
        assert np.all(np.isnan(dz)) == (kind == passes.DERIVATIVE)


@pytest.mark.parametrize("name", ["gelu", "elu", "softplus", "tanh"])
def test_a_layer_installs_the_passes_of_its_activation(name):
    code = fd.activations.get(name).code
    for kind in (passes.VALUES, passes.DERIVATIVE):
        for dtype in (np.float32, np.float64):
            with _entry(kind, dtype, code, 0):
                layer = fd.Dense(3, activation=name, dtype=dtype, seed=0)
                x = np.ones((2, 4), dtype)
                layer(x)
                assert passes.TABLE[passes.table_index(kind, np.dtype(dtype).itemsize, code)]


def test_install_skips_what_has_no_passes():
    before = list(passes.TABLE)
    for code in (act.LINEAR, act.RELU, act.SOFTMAX, 99):
        passes.install(code, np.float32)
    passes.install(act.GELU, np.int32)
    assert list(passes.TABLE) == before


@njit
def _address_of(kind, a, code):
    return passes.pass_address(kind, a, code)


def test_codes_outside_the_table_have_no_pass():
    a = np.zeros(1, np.float32)
    for code in (-1, passes.CODES, 1000):
        assert _address_of(passes.VALUES, a, code) == 0
    assert _address_of(passes.VALUES, a, act.GELU) == _address(passes.VALUES, np.float32,
                                                               act.GELU)
