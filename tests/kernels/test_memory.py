"""The jitted allocator of arrays on cache lines."""

from __future__ import annotations

import numpy as np
import pytest

from fastdense.kernels.memory import CACHE_LINE, aligned_empty_2d, empty_2d_in_phase
from tests.helpers import placed


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (1, 1), (3, 7), (64, 130)])
def test_aligned_empty_2d(dtype, shape):
    like = np.empty(0, dtype)
    seen = set()
    for _ in range(8):
        a = aligned_empty_2d(*shape, like)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.flags.writeable and a.ctypes.data % CACHE_LINE == 0
        a[...] = 1  # writable over its whole extent
        seen.add(a.ctypes.data)
    assert np.all(a == 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 8, 16, 48, 3])
def test_empty_2d_in_phase(dtype, offset):
    """Data at the same place within a cache line as the given array's (on a line when that
    place is not a whole number of elements)."""
    b = placed(np.zeros((8, 64 // np.dtype(dtype).itemsize), dtype), offset)
    expected = offset if offset % b.itemsize == 0 else 0
    for shape in [(0, 3), (1, 1), (3, 7), (40, 100)]:
        for _ in range(4):
            a = empty_2d_in_phase(*shape, b)
            assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
            assert a.size == 0 or a.ctypes.data % CACHE_LINE == expected
            a[...] = 1  # writable over its whole extent
            assert np.all(a == 1)
