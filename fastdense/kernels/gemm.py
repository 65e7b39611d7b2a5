"""Matrix products ``out = op(a) @ op(b)`` (``op`` = identity or transpose), Goto/BLIS style.

Large products pack ``op(a)`` into MR-row panels and ``op(b)`` into NR-column panels per KC
block (:mod:`fastdense.kernels.pack`) and run a generated register-tile micro-kernel
(:mod:`fastdense.kernels._microkernels`) over MC x NC blocks.  The store of each tile is the
*epilogue*: plain store, ``act(acc + bias)`` for the Dense forward pass, or the SGD update of the
weights for the fused backward pass (so the full ``dW`` need not exist).  Small products take a
direct path with no packing and no thread launch.

Reproducibility: threads split the *output* into row or column slabs; every output element sums
its K products in increasing ``p`` inside each KC block, and the blocks in increasing order, the
same for any thread count and any slab split.  The small path is chosen from the shape alone.
"""

import numpy as np
from numba import prange
from numba.np.ufunc.parallel import _iget_num_threads, _launch_threads

from fastdense.kernels import activation as act
from fastdense.kernels._codegen import kernel
from fastdense.kernels._tiles import _blocking, _ukernel
from fastdense.kernels.pack import pack_a, pack_b
from fastdense.kernels.update import penalty_grad

# ``numba.get_num_threads()`` inside a jitted function goes through a ctypes pointer, which makes
# the caller uncacheable ("dynamic globals"); this intrinsic is what Numba's own prange lowering
# uses: a call to the threading layer's exported ``get_num_threads`` symbol.
# Code loaded from Numba's cache skips the intrinsic's typing, which is what starts the threading
# layer and registers that symbol, so start it here (as any prange kernel's first call would).
_launch_threads()

# Epilogues applied when a tile is stored after its last KC block.
EP_STORE = 0
EP_BIAS_ACT = 1
EP_SGD = 2

# Below this many multiply-adds (m * n * k) the direct path wins: packing and a ~1.5 us
# thread launch cost more than they save (measured with tools/bench_kernels.py).
SMALL_WORK = 32 * 32 * 32
# Below this many multiply-adds one thread does the packed product (no prange launch).
SERIAL_WORK = 96 * 96 * 96


@kernel
def _epilogue_row(acc, o, j0, ep, bias, code, yrow, wrow, lr, l1, l2):
    """Final value of one row segment ``acc`` (length nr) of the product, stored by ``ep``.

    ``o`` is the output row segment (``z`` for the forward pass, ``dw`` otherwise), ``yrow``
    the activation output segment, ``wrow`` the weights segment updated by SGD.
    """
    nr = acc.shape[0]
    if ep == EP_STORE:
        for j in range(nr):
            o[j] = acc[j]
    elif ep == EP_BIAS_ACT:
        if bias.shape[0] > 0:
            bseg = bias[j0:j0 + nr]
            for j in range(nr):
                o[j] = acc[j] + bseg[j]
        else:
            for j in range(nr):
                o[j] = acc[j]
        if code == act.LINEAR or code == act.SOFTMAX:
            # Softmax needs whole rows: applied by a second pass.
            for j in range(nr):
                yrow[j] = o[j]
        elif code == act.RELU:
            for j in range(nr):
                v = o[j]
                yrow[j] = v if not v < 0 else v * 0.0
        else:
            for j in range(nr):
                yrow[j] = act.apply(code, o[j])
    else:
        if l1 == 0.0 and l2 == 0.0:
            for j in range(nr):
                wrow[j] -= lr * acc[j]
        else:
            for j in range(nr):
                wrow[j] -= lr * (acc[j] + penalty_grad(wrow[j], l1, l2))


@kernel
def _store_tile(tile, NR, out, i0, mr, j0, nr, first, last, ep, bias, code, y, w, lr, l1, l2):
    for r in range(mr):
        t = tile[r * NR:r * NR + nr]
        o = out[i0 + r, j0:j0 + nr]
        if not first:
            # Blocks add in increasing K order: t becomes the running sum.
            for j in range(nr):
                t[j] += o[j]
        if last:
            _epilogue_row(t, o, j0, ep, bias, code, y[i0 + r, j0:j0 + nr],
                          w[i0 + r, j0:j0 + nr], lr, l1, l2)
        else:
            for j in range(nr):
                o[j] = t[j]


@kernel
def _slab(a, b, out, trans_a, trans_b, m0, m1, n0, n1, ep, bias, code, y, w, lr, l1, l2,
          dcode, z, yd, dz, colsum, db, abuf, bbuf, tile):
    """The packed product for the output slab ``[m0:m1, n0:n1]`` (one thread's work)."""
    MR, NR, KC, MC, NC = _blocking(out)
    k = a.shape[0] if trans_a else a.shape[1]
    for jc in range(n0, n1, NC):
        nc = min(NC, n1 - jc)
        for pc in range(0, k, KC):
            kc = min(KC, k - pc)
            first = pc == 0
            last = pc + kc >= k
            # Column sums belong to the slab that owns the first rows, so each is summed once.
            pack_b(b, trans_b, pc, kc, jc, nc, bbuf, colsum and m0 == 0, db)
            for ic in range(m0, m1, MC):
                mc = min(MC, m1 - ic)
                pack_a(a, trans_a, ic, mc, pc, kc, abuf, dcode, z, yd, dz,
                       n0 == 0 and jc == n0)
                for jr in range(0, nc, NR):
                    nr = min(NR, nc - jr)
                    bp = bbuf[jr * kc:jr * kc + NR * kc]
                    for ir in range(0, mc, MR):
                        mr = min(MR, mc - ir)
                        ap = abuf[ir * kc:ir * kc + MR * kc]
                        _ukernel(kc, ap, bp, tile)
                        _store_tile(tile, NR, out, ic + ir, mr, jc + jr, nr, first, last, ep,
                                    bias, code, y, w, lr, l1, l2)


@kernel(parallel=True)
def _packed(a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2,
            dcode, z, yd, dz, colsum, db):
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    MR, NR, KC, MC, NC = _blocking(out)
    if colsum:
        for j in range(n):
            db[j] = 0
    pm = (m + MR - 1) // MR
    pn = (n + NR - 1) // NR
    nthreads = _iget_num_threads()
    if m * n * k < SERIAL_WORK:
        nthreads = 1
    # Split the output where the duplicated packing is cheaper: row slabs each pack all of
    # op(b) (k * n), column slabs all of op(a) (k * m).  Skinny shapes (few rows) thus split
    # columns and still use every core.
    by_rows = (n <= m and pm >= nthreads) or pn < nthreads
    panels = pm if by_rows else pn
    ntask = max(1, min(nthreads, panels))
    kc = min(KC, k)
    mcap = min(MC, ((pm + ntask - 1) // ntask) * MR if by_rows else pm * MR)
    ncap = min(NC, pn * NR if by_rows else ((pn + ntask - 1) // ntask) * NR)
    abufs = np.empty((ntask, ((mcap + MR - 1) // MR) * MR * kc), dtype=out.dtype)
    bbufs = np.empty((ntask, ((ncap + NR - 1) // NR) * NR * kc), dtype=out.dtype)
    tiles = np.empty((ntask, MR * NR), dtype=out.dtype)
    if ntask == 1:
        _slab(a, b, out, trans_a, trans_b, 0, m, 0, n, ep, bias, code, y, w, lr, l1, l2,
              dcode, z, yd, dz, colsum, db, abufs[0], bbufs[0], tiles[0])
        return
    for t in prange(ntask):
        # Balanced slabs in whole panels.
        p0 = (panels * t) // ntask
        p1 = (panels * (t + 1)) // ntask
        if by_rows:
            m0, m1, n0, n1 = p0 * MR, min(m, p1 * MR), 0, n
        else:
            m0, m1, n0, n1 = 0, m, p0 * NR, min(n, p1 * NR)
        _slab(a, b, out, trans_a, trans_b, m0, m1, n0, n1, ep, bias, code, y, w, lr, l1, l2,
              dcode, z, yd, dz, colsum, db, abufs[t], bbufs[t], tiles[t])


@kernel
def _small(a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2, acc):
    """Direct product for small shapes: no packing, no threads; ``acc`` is an n-row scratch.

    Each element still sums its products in increasing ``p`` (one FMA chain per element).
    """
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    for i in range(m):
        for j in range(n):
            acc[j] = 0
        if trans_b:
            for j in range(n):
                bj = b[j]
                s = acc[j]
                if trans_a:
                    for p in range(k):
                        s += a[p, i] * bj[p]
                else:
                    ai = a[i]
                    for p in range(k):
                        s += ai[p] * bj[p]
                acc[j] = s
        else:
            for p in range(k):
                aip = a[p, i] if trans_a else a[i, p]
                bp = b[p]
                for j in range(n):
                    acc[j] += aip * bp[j]
        _epilogue_row(acc, out[i], 0, ep, bias, code, y[i], w[i], lr, l1, l2)


@kernel
def is_small(m, n, k):
    """Whether ``m x n x k`` takes the direct (unpacked, single-thread) path.

    Also for one or two rows (batch-1 inference: a vector-matrix product) and for reductions of
    one or two steps (the batch-1 weight gradient, an outer product): both are bound by memory
    traffic, which packing would only add to.
    """
    return m * n * k <= SMALL_WORK or m <= 2 or k <= 2


@kernel
def product(a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2):
    """``out = op(a) @ op(b)`` with epilogue ``ep`` (see module constants); no fusion in A/B."""
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0 or is_small(m, n, k):
        _small(a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2,
               np.empty(n, dtype=out.dtype))
        return
    e2 = np.empty((0, 0), dtype=out.dtype)
    e1 = np.empty(0, dtype=out.dtype)
    _packed(a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2,
            act.LINEAR, e2, e2, e2, False, e1)


@kernel
def gemm(a, b, out, trans_a, trans_b):
    """Overwrite ``out`` (M, N) with ``op(a) @ op(b)``.

    Parameters
    ----------
    a : ndarray, 2-D, C-contiguous
        ``(M, K)``, or ``(K, M)`` when ``trans_a``.
    b : ndarray, 2-D, C-contiguous
        ``(K, N)``, or ``(N, K)`` when ``trans_b``.
    out : ndarray, 2-D, C-contiguous
        ``(M, N)``; overwritten.
    trans_a, trans_b : bool
        Whether to read ``a`` / ``b`` transposed.
    """
    e1 = np.empty(0, dtype=out.dtype)
    product(a, b, out, trans_a, trans_b, EP_STORE, e1, act.LINEAR, out, out, 0.0, 0.0, 0.0)
