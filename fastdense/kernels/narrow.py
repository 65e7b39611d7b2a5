"""Products with few output columns, ``out = act(a @ b + bias)`` for a ``b`` of at most a narrow
tile's width: the forward product of a layer of few units (a classifier's output layer).

The packed product (:mod:`.gemm`) computes whole tiles of NR columns, 32 in float32 with the
AVX-512 tiles, of which a layer of 10 units uses 10; transposed, the units fill the tile's MR
rows, but ``x.T`` must then be packed, and the batch fills NR columns: a batch of 6 is a tile
of 32 columns.  Here the tiles are as wide as the narrow tile (16 float32 or 8 float64
columns, ``_tiles.NARROW_TILES``: the AVX2 set's tiles, one 512-bit vector a row), or for at
most 8 float32 or 4 float64 columns one 256-bit vector a row (``_tiles.NARROW_HALF_TILES``,
eight rows); both operands are read in place, ``a`` six or eight rows at a time, and each tile
is stored with its epilogue.  Each element is the same FMA chain over the same KC blocks as in
the packed product, so the bits are the same.
"""

import numba
import numpy as np
from numba import prange
from numba.extending import register_jitable
from numba.np.ufunc.parallel import _iget_num_threads

from fastdense.kernels import activation as act
from fastdense.kernels._codegen import copy_n, fetch_add, kernel, strided_view
from fastdense.kernels._placement import caller_waits, region_opens, worker_arrives
from fastdense.kernels._tiles import (
    BLOCKING,
    NARROW_ROWS_MR,
    NARROW_TILES,
    _narrow_blocking,
    _narrow_half_nr,
    _narrow_rows_ukernel,
    _narrow_ukernel,
)
from fastdense.kernels.gemm import (
    EP_BIAS_ACT,
    EP_SGD,
    EP_STORE,
    ROWS_MAX,
    SHORT_WORKSPACE,
    _activate_rows,
    _activated_apart,
    bias_relu_row,
    is_small,
)
from fastdense.kernels.update import sgd_step

# Workspace elements before the threads' own: the check-in count of the parallel region
# (``._placement``) and the task counter, each on a cache line of its own.
_COUNTER = 16
_HEAD = 32
#: The error of :func:`narrow_product` given a ``b`` wider than its tiles.
TOO_WIDE = "narrow_product takes a b of at most the narrow tile's columns"
#: ... or a product of no steps (the layers' general kernels take those).
NO_STEPS = "narrow_product takes a product of at least one step"
# Below this many rows times steps (each a vector FMA per tile row, in either dtype) one thread
# does the product.  One thread against two, ``narrow_product`` alone (Zen 4): float64 256 x
# 100->5 14.4 / 12.2 us, 32 x 784->8 11.1 / 9.1, 128 x 100->5 7.8 / 8.4, 16 x 784->8 6.9 /
# 10.0; float32 32 x 784->10 11.2 / 8.8, 256 x 64->10 14.9 / 14.0, 16 x 784->10 6.7 / 7.5,
# 128 x 64->10 6.3 / 7.5.
SERIAL_STEPS = 1 << 14
# Tasks (runs of row panels) per thread.
_TASKS_PER_THREAD = 8


@register_jitable
def _per_thread(MR, NR, KC):
    """Workspace elements of each thread: its tile, a zero-padded panel of the last rows, and
    a copy of the end of ``b`` (:func:`_copy_end`), rounded up to whole cache lines (of
    float32)."""
    return ((MR * NR + KC * MR + (KC + NR) * NR + NR + 15) // 16) * 16


@register_jitable
def _copied_from(k, n, KC, NR):
    """The first step of ``b`` (``k x n``) read from the copy of its end: the start of the KC
    block of the first step whose NR elements from the start of its row pass ``b``'s end."""
    unsafe = max(0, k - (NR - 1) // n)
    return (min(unsafe, k - 1) // KC) * KC


@register_jitable
def narrow_ws_len(MR, NR, KC, threads):
    """Workspace length of :func:`narrow_product` for up to ``threads`` threads, with tiles of
    ``MR x NR`` (``_tiles.NARROW_TILES``) and blocks of ``KC`` steps."""
    return _HEAD + threads * _per_thread(MR, NR, KC)


@register_jitable
def workspace_for(ws, out):
    """``ws``, or a new workspace if it is too short for :func:`narrow_product` with ``out``'s
    dtype on the threads Numba runs now (for callers that may allocate)."""
    MR, NR, KC = _narrow_blocking(out)
    need = narrow_ws_len(MR, NR, KC, _iget_num_threads())
    return ws if ws.shape[0] >= need else np.empty(need, dtype=out.dtype)


@kernel(nrt=False)
def _copy_end(b, KC, NR, tail):
    """``b`` (C-contiguous, flattened) from the step :func:`_copied_from` says into ``tail``,
    then NR zeros, so that its last rows can be read NR elements at a time (at most KC + NR - 1
    rows: a whole block and fewer than NR steps after it)."""
    k, n = b.shape
    start = _copied_from(k, n, KC, NR)
    cnt = (k - start) * n
    copy_n(tail, 0, b.reshape(k * n), start * n, cnt)
    for j in range(NR):
        tail[cnt + j] = 0


@kernel(nrt=False, inline="always")
def _store_rows(tile, NR, out, i0, mr, n, first, last, ep, bias, relu, y, w, lr, l1, l2):
    """``gemm._store_tile`` (the same arithmetic) for a tile of ``mr`` rows and ``n`` columns,
    with ReLU or the identity after the bias, in loops of its own: through ``_store_tile``'s
    calls per row, a tile over a short reduction cost as much again as its FMAs (float64
    256 x 100->5, one thread, 14.3 against 11.4 us; float32 256 x 64->10 11.7 against 9.3)."""
    has_bias = bias.shape[0] > 0
    for r in range(mr):
        t = tile[r * NR:r * NR + n]
        o = out[i0 + r, :n]
        if not first:
            # Blocks add in increasing K order: t becomes the running sum.
            for j in range(n):
                t[j] += o[j]
        if last and ep == EP_BIAS_ACT:
            bias_relu_row(t, o, y[i0 + r, :n], bias, 0, has_bias, relu)
        elif last and ep == EP_SGD:
            sgd_step(w[i0 + r, :n], t, lr, l1, l2)
        else:
            for j in range(n):
                o[j] = t[j]


# Not linked into its caller (see ``kernel(link=False)``), so that one compiled copy of it and of
# its micro-kernel serves the forward product and the weight gradient (``dense`` passes ``a`` to
# both as a view of layout "A").
@kernel(nrt=False, link=False)
def _row_panels(a, b, out, q0, q1, ep, bias, code, y, w, lr, l1, l2, tile, abuf, tail):
    """Row panels ``q0:q1`` (MR rows each) of ``out = a @ b`` and the epilogue ``ep`` (as
    ``gemm._store_tile``: bias and ReLU or the identity, other activations being left to the
    caller; or the SGD step on ``w``: :func:`_store_rows`).  ``tile`` holds a tile, ``abuf``
    the zero-padded panel of ``a``'s rows when it has fewer than MR, ``tail`` the end of ``b``
    (:func:`_copy_end`).

    A last panel of fewer than MR rows is computed as the MR rows that end at ``a``'s last row,
    of which it stores its own: each row's sums are its own, so the bits are the same, and
    nothing is copied: a zero-padded copy of that panel cost about as much as six more rows
    (``narrow_matmul``, one thread, float32 784->10: 30 rows 7.6 us, 32 rows 9.8-11.4, 36
    rows 9.0-9.4; 32 rows 8.9 without the copy).

    The tiles read ``b`` (C-contiguous) in place, NR elements from the start of each row: the
    elements past the row's ``n`` are those of the next rows, and only feed tile columns that
    are never stored.  A padded copy of ``b`` made by one thread cost the other more than the
    product (each of its lines fetched from the first core's cache: float32 128 x 784->10, two
    threads, 41 against 23 us with the copy made once)."""
    MR, NR, KC = _narrow_blocking(out)
    m, k = a.shape
    n = out.shape[1]
    s0, s1 = a.strides
    size = a.itemsize
    bf = b.reshape(k * n)
    start = _copied_from(k, n, KC, NR)
    for q in range(q0, q1):
        i0 = q * MR
        mr = min(MR, m - i0)
        # The panel's first row in ``a`` (MR rows before the end for a last panel of fewer),
        # and its tile from the first row it stores.
        lo = min(i0, m - MR)
        rows = tile[(i0 - lo) * NR:] if lo >= 0 else tile
        for pc in range(0, k, KC):
            kc = min(KC, k - pc)
            if lo >= 0:
                a3 = strided_view(a[lo:, pc:], (1, kc, MR), (MR * s0, s1, s0))
            else:
                for p in range(kc):
                    for i in range(MR):
                        abuf[p * MR + i] = a[i0 + i, pc + p] if i < mr else 0
                a3 = strided_view(abuf, (1, kc, MR), (MR * kc * size, MR * size, size))
            # Mode 0: the tile stays in ``tile``, for a store of the ``n`` columns only.
            if pc >= start:
                _narrow_ukernel(kc, a3, tail, (pc - start) * n, n, tile, out, i0, 0, 0, 0.0, bias,
                                y, False)
            else:
                _narrow_ukernel(kc, a3, bf, pc * n, n, tile, out, i0, 0, 0, 0.0, bias, y, False)
            _store_rows(rows, NR, out, i0, mr, n, pc == 0, pc + kc >= k, ep, bias,
                        code == act.RELU, y, w, lr, l1, l2)


@kernel(nrt=False, link=False)
def _row_panels_256(a, b, out, q0, q1, ep, bias, code, y, w, lr, l1, l2, tile, tail):
    """:func:`_row_panels` for ``b`` of at most the NR of the tiles of 256-bit rows
    (``_tiles.NARROW_HALF_TILES``), in panels of NARROW_ROWS_MR rows: each row of ``a`` passed
    to the tile as an array of its own, the last panel's missing rows as repeats of ``a``'s
    last row (their sums are never stored), so nothing is copied.  Apart from
    :func:`_row_panels`, whose tile shape stays a compile-time constant there."""
    MR = NARROW_ROWS_MR
    NR = _narrow_half_nr(out)
    _, wide, KC = _narrow_blocking(out)
    m, k = a.shape
    n = out.shape[1]
    bf = b.reshape(k * n)
    # (``tail`` holds the end of ``b`` from where the wider tiles' reads would pass it: the
    # narrower reads of these tiles pass it later, if at all.)
    start = _copied_from(k, n, KC, wide)
    last = m - 1
    for q in range(q0, q1):
        i0 = q * MR
        mr = min(MR, m - i0)
        for pc in range(0, k, KC):
            kc = min(KC, k - pc)
            src = bf
            bo = pc * n
            if pc >= start:
                src = tail
                bo = (pc - start) * n
            _narrow_rows_ukernel(kc, a[i0, pc:pc + kc], a[min(i0 + 1, last), pc:pc + kc],
                                 a[min(i0 + 2, last), pc:pc + kc],
                                 a[min(i0 + 3, last), pc:pc + kc],
                                 a[min(i0 + 4, last), pc:pc + kc],
                                 a[min(i0 + 5, last), pc:pc + kc],
                                 a[min(i0 + 6, last), pc:pc + kc],
                                 a[min(i0 + 7, last), pc:pc + kc], src, bo, n, tile)
            _store_rows(tile, NR, out, i0, mr, n, pc == 0, pc + kc >= k, ep, bias,
                        code == act.RELU, y, w, lr, l1, l2)


@kernel(nrt=False, inline="always")
def _panels(rows256, a, b, out, q0, q1, ep, bias, code, y, w, lr, l1, l2, own, tile_end,
            abuf_end):
    """Row panels ``q0:q1`` by :func:`_row_panels_256` (``rows256``) or :func:`_row_panels`,
    with a thread's own workspace ``own`` (tile, padded panel, end of ``b``)."""
    if rows256:
        _row_panels_256(a, b, out, q0, q1, ep, bias, code, y, w, lr, l1, l2, own[:tile_end],
                        own[abuf_end:])
    else:
        _row_panels(a, b, out, q0, q1, ep, bias, code, y, w, lr, l1, l2, own[:tile_end],
                    own[tile_end:abuf_end], own[abuf_end:])


# (One compiled copy for the forward and backward passes, as _row_panels.)
@kernel(parallel=True, nrt=False, link=False)
def narrow_product(a, b, out, ep, bias, code, y, w, lr, l1, l2, ws):
    """``out = a @ b`` with an epilogue as ``gemm.product``'s (same arguments): ``EP_STORE``;
    ``EP_BIAS_ACT``, ``out += bias`` (an empty ``bias`` being none) and ``y = act(out)`` for an
    element-wise activation ``code``; or ``EP_SGD``, the SGD step with rate ``lr`` and penalty
    factors ``l1``, ``l2`` applied to ``w`` (``out`` holding the running sum of KC blocks).  For
    ``b`` (C-contiguous) of at most the narrow tile's NR columns and at least one row, ``a`` of
    any strides, and ``ws`` of at least :func:`narrow_ws_len` elements for the threads.

    Runs of row panels over the threads, unless the work is below SERIAL_STEPS: the same bits
    either way."""
    MR, NR, KC = _narrow_blocking(out)
    m, k = a.shape
    n = out.shape[1]
    if m == 0 or n == 0:
        return
    if n > NR:
        raise ValueError(TOO_WIDE)
    if k == 0:
        raise ValueError(NO_STEPS)
    # Columns that fit the tiles of 256-bit rows take those, in panels of their rows.
    rows256 = n <= _narrow_half_nr(out)
    pr = NARROW_ROWS_MR if rows256 else MR
    npan = (m + pr - 1) // pr
    nthreads = min(_iget_num_threads(), npan)
    if m * k < SERIAL_STEPS:
        nthreads = 1
    per = _per_thread(MR, NR, KC)
    if ws.shape[0] < narrow_ws_len(MR, NR, KC, nthreads):
        raise ValueError(SHORT_WORKSPACE)
    apart = ep == EP_BIAS_ACT and _activated_apart(code)
    scratch = ws[_HEAD:]
    tile_end = MR * NR
    abuf_end = tile_end + KC * MR
    if nthreads == 1:
        own = scratch[:per]
        _copy_end(b, KC, NR, own[abuf_end:])
        _panels(rows256, a, b, out, 0, npan, ep, bias, code, y, w, lr, l1, l2, own, tile_end,
                abuf_end)
        if apart:
            _activate_rows(y, 0, m, 0, n, code)
        return
    # Threads take runs of panels from a shared counter as they become free: a worker woken
    # late, or a core another process holds, does less of the work.
    ntasks = min(npan, _TASKS_PER_THREAD * nthreads)
    ws[_COUNTER] = 0
    caller_cpu = region_opens(ws, 0)
    for t in prange(nthreads):
        worker_arrives(ws, 0, caller_cpu)
        own = scratch[t * per:(t + 1) * per]
        # (Each thread its own copy: see _row_panels.)
        _copy_end(b, KC, NR, own[abuf_end:])
        while True:
            task = fetch_add(ws, _COUNTER, 1)
            if task >= ntasks:
                break
            q0 = (npan * task) // ntasks
            q1 = (npan * (task + 1)) // ntasks
            _panels(rows256, a, b, out, q0, q1, ep, bias, code, y, w, lr, l1, l2, own,
                    tile_end, abuf_end)
            if apart:
                r0 = q0 * pr
                _activate_rows(y, r0, min(m, q1 * pr) - r0, 0, n, code)
        caller_waits(ws, 0, nthreads)


def workspace_len(dtype) -> int:
    """:func:`narrow_ws_len` for ``dtype``'s tiles and every thread Numba may run."""
    name = np.dtype(dtype).name
    return narrow_ws_len(*NARROW_TILES[name], BLOCKING[name][2], numba.config.NUMBA_NUM_THREADS)


def matmul_takes(m: int, n: int, k: int, dtype) -> bool:
    """Whether ``fastdense.matmul`` computes ``(m x k) @ (k x n)`` by :func:`narrow_matmul`:
    at most the narrow tile's columns, more rows than ``gemm_rows`` takes and more than two
    steps, and either more work than the direct path's or at most KC steps (the direct path
    sums all steps in one chain, these tiles by KC blocks: the bits are the same within one
    block).  The packed product pads such a ``b`` to its own tile's columns (32 in float32
    with the AVX-512 tiles) and packs it; float32 1024 x 784 @ 784 x 10, two threads, 290
    against 150 us (NumPy 207).  The direct path sums each element in one chain of FMAs, each
    waiting for the last (see ``kernels.dense.uses_narrow``)."""
    name = np.dtype(dtype).name
    return (0 < n <= NARROW_TILES[name][1] and m > ROWS_MAX and k > ROWS_MAX
            and (not is_small(m, n, k) or k <= BLOCKING[name][2]))


# (``a`` as a view of layout "A": the same compiled product as the layers'.)
@kernel(nrt=False)
def narrow_matmul(a, b, out, ws):
    """``out = a @ b`` by :func:`narrow_product` (a plain store; the bits of ``gemm.gemm``),
    for the products :func:`matmul_takes`, ``ws`` of :func:`workspace_len` elements."""
    narrow_product(strided_view(a, a.shape, a.strides), b, out, EP_STORE, out[0, :0],
                   act.LINEAR, out, out, 0.0, 0.0, 0.0, ws)
