"""The jitted allocator of arrays on cache lines."""

from __future__ import annotations

import numpy as np
import pytest

from fastdense.kernels.memory import CACHE_LINE, aligned_empty_2d


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
