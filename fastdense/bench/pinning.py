"""Pin the thread count of every implementation under comparison to the same number.

A comparison is only fair if fastdense (Numba's pool), NumPy (the BLAS pool, through
threadpoolctl) and PyTorch (its intra-op pool) all use the same number of threads.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import numba

import fastdense


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at most Numba's thread limit."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    return max(1, min(cores, numba.config.NUMBA_NUM_THREADS))


def _torch():
    # Only a torch the caller already imported: pinning must not pay for importing it.
    return sys.modules.get("torch")


@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` threads in fastdense, the BLAS and (if imported) PyTorch.

    Parameters
    ----------
    n : int
        Thread count, between 1 and ``numba.config.NUMBA_NUM_THREADS``.

    Notes
    -----
    Previous settings are restored on exit.  PyTorch is pinned only if it is already imported,
    so import it before entering the block.
    """
    from threadpoolctl import threadpool_limits

    torch = _torch()
    torch_before = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=n, user_api="blas"), fastdense.threads(n):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(torch_before)
