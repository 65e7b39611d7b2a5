"""Arrays on cache lines (fastdense._aligned) and where the layer uses them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import fastdense as fd
from fastdense import _aligned
from fastdense.kernels.memory import CACHE_LINE


def _on_a_line(a: np.ndarray) -> bool:
    return a.ctypes.data % CACHE_LINE == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 5), (0, 4), (16, 33)])
def test_empty_and_copy_are_c_contiguous_on_a_cache_line(dtype, shape):
    for _ in range(8):  # several allocations: NumPy's own alignment is only 16 bytes
        a = _aligned.empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.flags.writeable and (a.size == 0 or _on_a_line(a))
    values = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    b = _aligned.copy(values, dtype)
    assert b.dtype == dtype and (b.size == 0 or _on_a_line(b)) and b.flags.c_contiguous
    np.testing.assert_array_equal(b, values.astype(dtype))
    assert not np.shares_memory(b, values)


def test_copy_of_a_transposed_view_is_c_contiguous():
    values = np.arange(12.0).reshape(3, 4).T
    b = _aligned.copy(values, np.float32)
    assert b.flags.c_contiguous and _on_a_line(b)
    np.testing.assert_array_equal(b, values)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_weights_and_workspaces_are_on_cache_lines(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 31)).astype(dtype)
    layer = fd.Dense(17, activation="relu", dtype=dtype, seed=0)
    layer(x)
    layer.backprop(np.ones((5, 17), dtype), fd.SGD(0.1))
    arrays = [layer.weight, layer.bias, *layer._workspace.values()]
    assert all(_on_a_line(a) for a in arrays)
    kernel, bias = (w + 1 for w in layer.get_weights())
    layer.set_weights([kernel, bias])
    assert _on_a_line(layer.weight) and _on_a_line(layer.bias)
    np.testing.assert_array_equal(layer.weight, kernel)
    twin = pickle.loads(pickle.dumps(layer))
    assert _on_a_line(twin.weight) and _on_a_line(twin.bias)
    np.testing.assert_array_equal(twin.weight, kernel)


@pytest.mark.parametrize("training", [True, False])
def test_large_forward_outputs_are_fresh_and_on_cache_lines(training):
    """From _aligned.OUTPUT_BYTES each call returns a new array on a cache line, the first
    (full path) and the replayed calls alike, with the reference's values; so do input
    gradients."""
    units = 96
    batch = _aligned.OUTPUT_BYTES // (4 * units) + 1
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 100)).astype(np.float32)  # dx too is large
    layer = fd.Dense(units, activation="relu", seed=0, training=training)
    outputs = [layer(x) for _ in range(3)]
    for y in outputs:
        assert _on_a_line(y) and y.flags.c_contiguous and y.shape == (batch, units)
        expected = np.maximum(x.astype(np.float64) @ layer.weight + layer.bias, 0)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert not np.shares_memory(outputs[1], outputs[2])
    assert not np.shares_memory(outputs[0], outputs[1])
    g = rng.standard_normal((batch, units)).astype(np.float32)
    if training:
        dx = [layer.backprop(g, fd.SGD(0.0)) for _ in range(2) if layer(x) is not None]
        assert all(_on_a_line(d) for d in dx) and not np.shares_memory(dx[0], dx[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_functional_outputs_are_on_cache_lines_from_the_threshold(dtype, rows):
    """matmul and linear: outputs of OUTPUT_BYTES or more on a cache line; the values are
    the reference's at any size."""
    rng = np.random.default_rng(2)
    units = _aligned.OUTPUT_BYTES // np.dtype(dtype).itemsize // 40 + 1  # 40 rows: aligned
    a = rng.standard_normal((rows, 24)).astype(dtype)
    b = rng.standard_normal((24, units)).astype(dtype)
    expected = a.astype(np.float64) @ b
    tol = 24 * np.finfo(dtype).eps * 4
    for out in (fd.matmul(a, b), fd.linear(a, b)):
        np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * np.abs(expected).max())
        # Below the threshold NumPy's 16-byte alignment may or may not fall on a line.
        assert _on_a_line(out) or rows < 40
