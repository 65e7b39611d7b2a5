"""Matrix products ``out = op(a) @ op(b)`` with ``op`` the identity or the transpose.

Transposed operands are read in place, never materialised.  Work is split over rows of the
output only, and every output element sums its K products in the same order whatever the thread
count, so results are bitwise reproducible.
"""

from numba import njit, prange


@njit(cache=True, parallel=True, fastmath={"contract"})
def gemm(a, b, out, trans_a, trans_b):
    """Overwrite ``out`` (M, N) with ``op(a) @ op(b)``.

    Parameters
    ----------
    a : ndarray, 2-D
        ``(M, K)``, or ``(K, M)`` when ``trans_a``.
    b : ndarray, 2-D
        ``(K, N)``, or ``(N, K)`` when ``trans_b``.
    out : ndarray, 2-D, C-contiguous
        ``(M, N)``; overwritten.
    trans_a, trans_b : bool
        Whether to read ``a`` / ``b`` transposed.
    """
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if trans_b:
        for i in prange(m):
            oi = out[i]
            for j in range(n):
                bj = b[j]
                acc = 0.0
                if trans_a:
                    for p in range(k):
                        acc += a[p, i] * bj[p]
                else:
                    ai = a[i]
                    for p in range(k):
                        acc += ai[p] * bj[p]
                oi[j] = acc
        return
    for i in prange(m):
        oi = out[i]
        for j in range(n):
            oi[j] = 0.0
        for p in range(k):
            aip = a[p, i] if trans_a else a[i, p]
            bp = b[p]
            for j in range(n):
                oi[j] += aip * bp[j]
