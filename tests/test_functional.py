"""``fastdense.matmul`` and ``fastdense.linear``."""

from __future__ import annotations

import numpy as np
import pytest

import fastdense as fd
from fastdense import _aligned
from tests.bounds import matmul_bound
from tests.helpers import placed


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(1024, 784, 10), (37, 600, 3), (7, 300, 8), (300, 40, 16)])
def test_matmul_of_few_columns_by_row_tiles(dtype, m, k, n):
    """A ``b`` of at most the narrow tile's columns goes to the row tiles
    (``kernels.narrow``), with the packed product's bits; one column more to the packed
    product.  Alternating with wider products, so that the remembered workspace of one shape
    is never used for the other."""
    from fastdense.kernels import narrow
    from fastdense.kernels.gemm import gemm

    n = min(n, narrow.NARROW_TILES[np.dtype(dtype).name][1])
    rng = np.random.default_rng(m + n)
    for cols in (n, narrow.NARROW_TILES[np.dtype(dtype).name][1] + 1, n):
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, cols)).astype(dtype)
        expected = np.empty((m, cols), dtype)
        gemm(a, b, expected, False, False)
        np.testing.assert_array_equal(fd.matmul(a, b), expected)
        assert narrow.matmul_takes(m, cols, k, dtype) == (cols == n)


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 16, 48])
def test_outputs_of_few_rows_lie_in_phase_with_b(dtype, offset):
    """``matmul`` and ``linear`` of up to DIRECT_SKINNY_ROWS rows (and enough work) put their
    output where B (the kernel) starts within its cache line, with the bits of a B on a line;
    more rows get an output on a line (from _aligned.OUTPUT_BYTES)."""
    from fastdense.kernels.gemm import DIRECT_SKINNY_ROWS
    from fastdense.kernels.memory import CACHE_LINE

    rng = np.random.default_rng(4)
    k, n = 300, 160
    kernel = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(dtype)
    off_line = placed(kernel, offset)
    on_line = _aligned.copy(kernel, dtype)
    bias = rng.standard_normal(n).astype(dtype)
    for rows in (DIRECT_SKINNY_ROWS, DIRECT_SKINNY_ROWS + 1):
        x = rng.standard_normal((rows, k)).astype(dtype)
        assert _aligned.aligns_output((rows, n), x.itemsize)
        assert _aligned.reads_b_in_place(rows, n, k) == (rows <= DIRECT_SKINNY_ROWS)
        phase = offset if rows <= DIRECT_SKINNY_ROWS else 0
        c = fd.matmul(x, off_line)
        y = fd.linear(x, off_line, bias, "relu")
        assert c.ctypes.data % CACHE_LINE == phase and y.ctypes.data % CACHE_LINE == phase
        np.testing.assert_array_equal(c, fd.matmul(x, on_line))
        np.testing.assert_array_equal(y, fd.linear(x, on_line, bias, "relu"))
        # The bias as one more term of each reduction: x @ kernel + bias = [x 1] @ [kernel; bias].
        x1, wb = np.hstack([x, np.ones((rows, 1), dtype)]), np.vstack([kernel, bias])
        exact = np.maximum(x1.astype(np.float64) @ wb, 0)
        assert np.all(np.abs(y - exact) <= matmul_bound(x1, wb, dtype))
