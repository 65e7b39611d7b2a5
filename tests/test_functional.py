"""``fastdense.matmul`` and ``fastdense.linear``."""

from __future__ import annotations

import numpy as np
import pytest

import fastdense as fd
from tests.bounds import matmul_bound


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (7, 13, 5), (64, 3, 33), (0, 4, 3), (3, 0, 2)])
def test_matmul(dtype, m, k, n):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c = fd.matmul(a, b)
    assert c.dtype == dtype and c.shape == (m, n)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert np.all(np.abs(c - exact) <= matmul_bound(a, b, dtype))


def test_matmul_reused_workspace():
    """Products of alternating shapes and dtypes, each shape seen again after others: every
    result has the bits of a call with a workspace of its own (the remembered workspace of
    the last shape must not serve another shape or dtype)."""
    from fastdense.kernels.gemm import gemm, gemm_rows, workspace_size

    rng = np.random.default_rng(2)
    shapes = [(1, 300, 300), (100, 200, 300), (1, 300, 300), (2, 300, 300), (1, 300, 300)]
    for m, k, n in shapes:
        for dtype in (np.float32, np.float64, np.float32):
            a = rng.standard_normal((m, k)).astype(dtype)
            b = rng.standard_normal((k, n)).astype(dtype)
            c = fd.matmul(a, b)
            expected = np.empty((m, n), dtype)
            ws = np.empty(workspace_size(m, n, k, dtype), dtype)
            if m <= 2:
                gemm_rows(a, b, expected, ws)
            else:
                gemm(a, b, expected, False, False, ws)
            np.testing.assert_array_equal(c, expected)


def test_matmul_promotion_and_errors():
    assert fd.matmul(np.ones((2, 2), np.int64), np.ones((2, 2), np.float32)).dtype == np.float64
    assert fd.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="3 columns but b has 2 rows"):
        fd.matmul(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="2-D"):
        fd.matmul(np.ones(3), np.ones((3, 2)))
    with pytest.raises(TypeError, match="real"):
        fd.matmul(np.ones((2, 2), complex), np.ones((2, 2)))


def test_linear_matches_layer():
    rng = np.random.default_rng(1)
    layer = fd.Dense(5, activation="sigmoid", seed=0, training=False)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    y = layer(x)
    np.testing.assert_array_equal(fd.linear(x, layer.weight, layer.bias, "sigmoid"), y)
    with pytest.raises(ValueError, match="bias must have shape"):
        fd.linear(x, layer.weight, np.ones(4))
    with pytest.raises(ValueError, match="features"):
        fd.linear(x, np.ones((3, 5)))


def test_threads_api():
    n = fd.get_num_threads()
    with fd.threads(1):
        assert fd.get_num_threads() == 1
    assert fd.get_num_threads() == n
    with pytest.raises(ValueError, match="between 1"):
        fd.set_num_threads(0)
    with pytest.raises(TypeError):
        fd.set_num_threads(1.5)
