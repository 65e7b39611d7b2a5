"""``pack.dz_rows``, the activation derivative of the backward pass: its ReLU loop and the
activations' derivative passes give the bits of the generic
:func:`fastdense.kernels.activation.derivative`, for every activation, special values included,
through every caller's split of the rows.  And
``pack.pack_b_rows``, which writes :func:`~fastdense.kernels.pack.pack_b`'s layout by rows."""

from __future__ import annotations

import numpy as np
import pytest

from fastdense.kernels import activation as act
from fastdense.kernels import dense as kd
from fastdense.kernels._tiles import BLOCKING
from fastdense.kernels.pack import dz_rows, pack_b, pack_b_rows
from tests.helpers import assert_same_bits, generic_derivative

CODES = [c for c in range(act.SOFTPLUS + 1) if c not in (act.LINEAR, act.SOFTMAX)]


def _inputs(dtype, code, m=37, n=53):
    rng = np.random.default_rng(code)
    z = (rng.standard_normal((m, n)) * 3).astype(dtype)
    z.flat[:7] = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, -1e-40], dtype=dtype)
    y = np.empty_like(z)
    act.activate(code, z, y)
    g = rng.standard_normal((m, n)).astype(dtype)
    g.flat[-3:] = np.array([np.nan, np.inf, -0.0], dtype=dtype)
    return g, z, y


@pytest.mark.parametrize("code", CODES)
def test_dz_rows_matches_the_generic_derivative(dtype, code):
    g, z, y = _inputs(dtype, code)
    want = np.empty_like(g)
    generic_derivative(g, z, y, code, want)
    got = np.full_like(g, 7.0)
    dz_rows(g, z, y, code, 0, g.shape[0], 0, g.shape[1], got, 0, 0)
    assert_same_bits(got, want)


@pytest.mark.parametrize("code", CODES)
def test_dz_rows_writes_only_its_block(dtype, code):
    g, z, y = _inputs(dtype, code)
    want = np.full_like(g, 7.0)
    generic_derivative(g[5:20, 8:40], z[5:20, 8:40], y[5:20, 8:40], code, want[5:20, 8:40])
    got = np.full_like(g, 7.0)
    dz_rows(g, z, y, code, 5, 15, 8, 32, got, 5, 8)
    assert_same_bits(got, want)


@pytest.mark.parametrize("code", CODES)
def test_dz_rows_writes_a_block_elsewhere(dtype, code):
    """A block of rows and steps written at another place of ``dz`` (a panel's scratch)."""
    g, z, y = _inputs(dtype, code)
    want = np.full((20, 40), 7.0, dtype)
    generic_derivative(g[5:20, 8:40], z[5:20, 8:40], y[5:20, 8:40], code, want[2:17, 1:33])
    got = np.full((20, 40), 7.0, dtype)
    dz_rows(g, z, y, code, 5, 15, 8, 32, got, 2, 1)
    assert_same_bits(got, want)


@pytest.mark.parametrize("code", CODES)
def test_activation_grad_serial_and_parallel(dtype, code):
    g, z, y = _inputs(dtype, code, m=131)
    want = np.empty_like(g)
    generic_derivative(g, z, y, code, want)
    for fn in (kd.activation_grad, kd._activation_grad_serial):
        got = np.empty_like(g)
        fn(g, z, y, code, got)
        assert_same_bits(got, want)


@pytest.mark.parametrize("nc", [1, 40, 64, 100])  # partial panel only, partial last, full
@pytest.mark.parametrize("splits", [1, 2, 3])
def test_pack_b_rows_writes_pack_b_layout(dtype, nc, splits):
    # The row shares of any number of threads together write exactly pack_b's panels,
    # zero padding included, whatever was in the buffer before.
    nr, kc = BLOCKING[np.dtype(dtype).name][1], 37
    rng = np.random.default_rng(nc)
    b = rng.standard_normal((kc + 9, nc + 11)).astype(dtype)
    panels = -(-nc // nr) * nr * kc
    want = np.full(panels, np.nan, dtype)
    pack_b(b, False, 5, kc, 3, nc, want, False, np.empty(0, dtype))
    got = np.full(panels, np.nan, dtype)
    for t in range(splits):
        pack_b_rows(b, 5, kc, kc * t // splits, kc * (t + 1) // splits, 3, nc, got)
    assert_same_bits(got, want)
