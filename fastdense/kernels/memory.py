"""Allocation of arrays whose data start on a cache line (see :mod:`fastdense._aligned`)."""

import numpy as np

from fastdense.kernels._codegen import dated_njit

#: Bytes of a cache line on the CPUs the kernels target.
CACHE_LINE = 64


@dated_njit()
def aligned_empty_2d(m, n, like):
    """An uninitialized C-contiguous ``(m, n)`` array of ``like``'s dtype whose data start on a
    cache line: a view into a slightly longer allocation.  Jitted because Python reads an
    array's address slowly (``ndarray.ctypes`` costs more than the allocation itself)."""
    pad = CACHE_LINE // like.itemsize
    raw = np.empty(m * n + pad, like.dtype)
    start = (-(raw.ctypes.data % CACHE_LINE) % CACHE_LINE) // like.itemsize
    return raw[start:start + m * n].reshape((m, n))


@dated_njit()
def empty_2d_in_phase(m, n, b):
    """An uninitialized C-contiguous ``(m, n)`` array of ``b``'s dtype whose data start at the
    same place within a cache line as ``b``'s (on a line if ``b``'s start is not a whole number
    of elements past one).  A product that reads ``b`` in place then has both ``b``'s panels
    and its output's tiles on lines (see ``_b_panels`` in :mod:`fastdense.kernels.gemm`)."""
    pad = CACHE_LINE // b.itemsize
    raw = np.empty(m * n + pad, b.dtype)
    phase = b.ctypes.data % CACHE_LINE
    if phase % b.itemsize != 0:
        phase = 0
    start = ((phase - raw.ctypes.data % CACHE_LINE) % CACHE_LINE) // b.itemsize
    return raw[start:start + m * n].reshape((m, n))
