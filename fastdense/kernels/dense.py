"""Fused forward and backward passes of a Dense layer.

Forward writes ``act(x @ w + bias)`` as each output tile is stored (softmax, which needs whole
rows, takes a second pass).  Backward turns the upstream gradient into the gradients of the
input, the kernel and the bias in one call: the activation derivative is applied while dZ is
packed for ``dx = dz @ w.T``, the bias gradient is summed while dZ is packed for
``dw = x.T @ dz``, and with ``fuse_sgd`` the SGD step is applied to ``w`` as each ``dw`` tile is
stored.  ``dx`` is computed first, so it always sees the weights of the forward pass.
"""

import numba
import numpy as np
from numba import prange
from numba.extending import register_jitable
from numba.np.ufunc.parallel import _iget_num_threads

from fastdense.kernels import activation as act
from fastdense.kernels._codegen import fetch_add, fma, kernel, strided_view, wide_vectors, zero_of
from fastdense.kernels._microkernels import DOT_LANES, DOT_ROWS, DOT_UNITS, dots_1, dots_4
from fastdense.kernels._placement import caller_waits, region_opens, worker_arrives
from fastdense.kernels._tiles import (
    BLOCKING,
    DOT_UNITS_MAX,
    STRIPS_UNITS_MAX,
    _blocking,
    _strip_width,
    _unit_dots,
    _unit_strip,
    _unit_strip_width,
)
from fastdense.kernels.activation_passes import require_passes
from fastdense.kernels.gemm import (
    DIRECT_ROWS,
    EP_BIAS_ACT,
    EP_SGD,
    EP_STORE,
    ROWS_MAX,
    SERIAL_WORK,
    SHORT_WORKSPACE,
    SMALL_WORK,
    VECTOR_THREADS_BYTES,
    _activate_rows,
    _activated_apart,
    _packed,
    _small,
    _unaliased,
    _vector_block_rows,
    _ws_len,
    column_sums_serial,
    double_buffers_b,
    is_small,
    product,
    rows_ws_len,
    strips,
    strips_between,
    thread_blocks,
    uses_rows,
    vector_matrix,
)
from fastdense.kernels.gemm import workspace_size as product_workspace_size
from fastdense.kernels.narrow import narrow_product, workspace_for, workspace_len
from fastdense.kernels.pack import dz_rows
from fastdense.kernels.update import sgd_step, sgd_value


@kernel(parallel=True)
def _softmax_rows(z, y):
    for i in prange(z.shape[0]):
        act.softmax_row(z[i], y[i])


@kernel(nrt=False)
def _softmax_rows_serial(z, y):
    for i in range(z.shape[0]):
        act.softmax_row(z[i], y[i])


def workspace_size(n_in, units, dtype):
    """Length of the 1-D workspace :func:`forward` and :func:`backward` need for a layer.

    Independent of the batch size, so one workspace per layer serves every batch: an upper
    bound of :func:`fastdense.kernels.gemm.workspace_size` over the three products
    (``x @ w``, ``dz @ w.T``, ``x.T @ dz``) for any batch.
    """
    dt = np.dtype(dtype)
    MR, NR, KC, MC, NC = BLOCKING[dt.name]
    widest = max(n_in, units)
    size = max(_ws_len(MC, widest, KC, MR, NR, KC, MC, NC, numba.config.NUMBA_NUM_THREADS,
                       double_buffers_b(1, units, n_in, dt.itemsize, MC)),
               rows_ws_len(ROWS_MAX, units, n_in, KC, dt.itemsize))
    if units <= SHORT_DX_UNITS:
        # The end of it for the weights transposed (:func:`backward_dx_by_rows`).
        size += _narrow_tail(n_in, units)
    return size


@kernel
def _layer_ws(n_in, units, out):
    """:func:`workspace_size` inside kernels (for callers that pass no workspace)."""
    MR, NR, KC, MC, NC = _blocking(out)
    widest = max(n_in, units)
    return np.empty(_ws_len(MC, widest, KC, MR, NR, KC, MC, NC, _iget_num_threads(),
                            double_buffers_b(1, units, n_in, out.itemsize, MC)), dtype=out.dtype)


@kernel
def forward(x, w, bias, code, z, y, ws=None):
    """``z = x @ w + bias`` and ``y = act(z)``.

    Parameters
    ----------
    x : ndarray (N, in), C-contiguous
    w : ndarray (in, units), C-contiguous
    bias : ndarray (units,) or (0,)
        An empty array means no bias.
    code : int
        Activation code from :mod:`fastdense.kernels.activation`, of an element-wise
        activation: softmax, which needs whole rows, is :func:`forward_softmax`'s (see
        :func:`forward_for`).  Activations other than the identity and ReLU need their
        passes installed (:func:`fastdense.kernels.activation_passes.install`; the layer does
        it): without them this raises ``ValueError`` before writing anything.
    z, y : ndarray (N, units), C-contiguous
        Outputs; ``y`` may be ``z`` itself when ``z`` need not be kept.
    ws : ndarray (workspace_size(in, units, dtype),), optional
        Workspace (packing buffers), kept by the caller across calls so that no call
        allocates; without it the kernel allocates one.
    """
    if code == act.SOFTMAX:
        raise ValueError("forward takes element-wise activations; softmax is forward_softmax")
    require_passes(code, y)
    m, n = z.shape
    if ws is None:
        buf = _layer_ws(w.shape[0], w.shape[1], w)
    else:
        buf = ws
    k = x.shape[1]
    # ``gemm.product``'s dispatch, inlined: one call level less to compile.
    if m > 0 and n > 0:
        if k == 0 or is_small(m, n, k):
            _small(x, w, z, False, False, EP_BIAS_ACT, bias, code, y, z, 0.0, 0.0, 0.0,
                   _unaliased(buf, n, w))
        else:
            _packed(x, w, z, False, False, EP_BIAS_ACT, bias, code, y, z, 0.0, 0.0, 0.0,
                    act.LINEAR, z[:0], z[:0], z[:0], False, bias[:0], buf)


# A kernel of its own, so that the softmax pass is compiled only for the layers that use it: in
# ``forward`` it was a sixth of the cold compile of a ReLU layer's forward and backprop.
@kernel
def forward_softmax(x, w, bias, code, z, y, ws=None):
    """:func:`forward` for the softmax activation (``code``, unused, is ``act.SOFTMAX``; the
    same arguments): ``z = x @ w + bias`` by :func:`forward`'s product, then ``y = softmax(z)``
    over whole rows."""
    forward(x, w, bias, act.LINEAR, z, y, ws)
    _softmax_pass(z, y)


@kernel
def _softmax_pass(z, y):
    """``y = softmax(z)`` over whole rows, on the threads from 16384 elements."""
    m, n = z.shape
    if m * n < 16384:
        _softmax_rows_serial(z, y)
    else:
        _softmax_rows(z, y)


def forward_for(code: int, rows: bool = False, narrow: bool = False, dots: int = 0):
    """The forward kernel for activation ``code``: :func:`forward` and for softmax
    :func:`forward_softmax`, or with ``rows`` (a batch of one or two, ``gemm.uses_rows``)
    :func:`forward_rows` and :func:`forward_rows_softmax`, or with ``narrow`` (few units, as
    :func:`product_paths` says) :func:`forward_narrow`, for every activation; with ``dots``
    (the units of a layer that :func:`uses_dots`, taking precedence) :func:`forward_dots`, or
    for units summed in groups :func:`forward_unit_dots`."""
    if dots:
        return forward_unit_dots if _dots_padded(dots) >= DOT_UNITS else forward_dots
    if rows:
        return forward_rows_softmax if code == act.SOFTMAX else forward_rows
    if narrow:
        return forward_narrow
    return forward_softmax if code == act.SOFTMAX else forward


# Layers of few units (a classifier's output layer: 10 units) fill a fraction of the register
# tile's NR columns (10 of 32 in float32 with the AVX-512 tiles), so most of the tile's FMAs
# are spent on zero padding.  Their forward product runs by narrower row tiles that read both
# operands in place (``narrow.narrow_product``: 6 x 16 float32 and 6 x 8 float64, and for at
# most 8 float32 or 4 float64 units 8 x 8 and 8 x 4), and so does their weight gradient, or
# transposed (:func:`backward_narrow_for`).  Each element is the same FMA chain as in the
# general products (the reduction's KC blocks are the same), so the bits are those of the
# general products.  The input gradient ``dz @ w.T`` keeps the general product (its reduction
# is over the units), or above DIRECT_ROWS rows runs row by row (:func:`_input_grad_by_rows`).
# Forward, two threads, general / row tiles (NumPy), float32 (Zen 4): 6 x 784->10 10.1 / 2.4
# us (5.3), 32 x 784->10 18.2 / 8.3 (11.8), 128 x 784->10 36.0 / 23.4 (31.9), 1024 x 784->10
# 290 / 150 (207).  Until the 8-row tiles, a float32 layer of at
# most 6 units ran its forward product transposed with the AVX2 tiles (the units as the 6-row
# tile's rows), which padded less than the 16 columns of the row tiles; the 8 x 8 tiles were
# as fast or faster in all but one of eight shapes measured (see the README, 822130f).
# Layers of one or two units forward by dot products instead (:func:`forward_dots`, every
# batch size): the 8-row tiles spend one FMA per row and step on one useful lane of eight,
# which left such a forward at a quarter of NumPy's speed (float32 1024 x 784->1: 103 us
# against NumPy's matrix-vector product's 24).  Their own summation order, so their own bits.
#: Columns a transposing pass takes from each row of a transposed result at a time: a cache
#: line's worth, so that each row's line is read once even when the rows are a multiple of
#: 4 KiB apart (all in one set of the L1).
TRANSPOSE_BLOCK = 16


def is_narrow(units: int, dtype) -> bool:
    """Whether a layer of ``units`` has kernels of its own for few units (:func:`forward_narrow`,
    :func:`backward_narrow_for`): when the units fill at most half of the register tile's
    columns.  Decided in Python, so that those kernels are compiled only when a program has
    such a layer."""
    nr = BLOCKING[np.dtype(dtype).name][1]
    return 0 < 2 * units <= nr


def uses_narrow(batch: int, n_in: int, units: int, dtype) -> bool:
    """Whether a layer's products for a batch of ``batch`` take the few-unit kernels: few units
    (:func:`is_narrow`, one or more) and more than ``gemm.ROWS_MAX`` rows and inputs, however
    small the work, as long as the bits are those of the general kernels.

    The general kernels' direct path (``gemm.is_small``, up to ``gemm.SMALL_WORK``) sums each
    element in one chain of FMAs, each waiting for the last: two threads, float32 forward and
    training step, direct / few-unit kernels (NumPy), 100 x 80->1 19.1 / 3.9 us (4.4) and 63.6
    / 13.2 (23.5), 32 x 64->3 6.4 / 2.0 (4.3) and 21.6 / 10.8 (14.8), 8 x 10->3 1.5 / 1.3 (4.0).
    Its chain runs over all the steps, the few-unit kernels' over KC blocks like the packed
    product's: so small products take them only over at most KC inputs and rows (both
    reductions, forward and weight gradient, in one block)."""
    kc = BLOCKING[np.dtype(dtype).name][2]
    return (is_narrow(units, dtype) and batch > ROWS_MAX and n_in > ROWS_MAX
            and (batch * n_in * units > SMALL_WORK or max(batch, n_in) <= kc))


def product_paths(batch: int, n_in: int, units: int, dtype) -> tuple[bool, bool]:
    """``(rows, narrow)``: whether a layer's products for a batch of ``batch`` take the row
    entry points (``gemm.uses_rows``: :func:`forward_rows`, :func:`backward_rows`), or the
    kernels of few units (:func:`uses_narrow`: :func:`forward_narrow`,
    :func:`backward_narrow_for`'s); neither means :func:`forward` and :func:`backward`.  Decided
    in Python, so that only the kernels a program uses are compiled."""
    rows = uses_rows(batch, units, n_in)
    return rows, not rows and uses_narrow(batch, n_in, units, dtype)


def narrow_workspace_size(batch: int, n_in: int, units: int, dtype) -> int:
    """Length of the workspace the kernels of a few-unit layer need for a batch of ``batch``:
    the packing buffers of the input gradient's product or the transposed weight gradient's,
    then the transposed weights (:func:`_input_grad_by_rows`) or weight gradient
    (:func:`_weight_grad_transposed`) and a block for the transposing pass; or the row tiles'
    workspace for every thread (``narrow.workspace_len``), if longer."""
    head = max(product_workspace_size(batch, n_in, units, dtype),
               product_workspace_size(units, n_in, batch, dtype),
               _strips_head(batch, n_in, units, numba.config.NUMBA_NUM_THREADS))
    return max(head + _narrow_tail(n_in, units), workspace_len(dtype))


@register_jitable
def _narrow_tail(n_in, units):
    """Elements at the end of a narrow layer's workspace: the weights or their gradient
    transposed (``units x n_in``) and the transposing pass's block."""
    return units * n_in + TRANSPOSE_BLOCK * units


#: Elements before the weight gradient by strips' buffers in its workspace: the count of the
#: workers that started (``._placement``), on a cache line of its own.
_STRIPS_COUNTER = 16


@register_jitable
def _strips_head(batch, n_in, units, threads):
    """Elements of the workspace's head the weight gradient by strips needs
    (:func:`_weight_grad_strips`): the counter, ``dz``'s columns as rows, a row of partial
    sums per thread and for groups of units (three or more) DOT_UNITS more."""
    groups = DOT_UNITS if units >= DOT_UNITS - 1 else 0
    return _STRIPS_COUNTER + units * batch + threads * n_in * (1 + groups)


@register_jitable
def _narrow_split(ws, rows, cols, out):
    """``(head, t, block)``: the workspace's head for the product, a C-contiguous
    ``(rows, cols)`` array for a transposed matrix and a block for the transposing pass,
    from the end of ``ws`` (allocated when ``ws`` is too short, :func:`narrow_workspace_size`)."""
    tail = rows * cols + TRANSPOSE_BLOCK * rows
    if ws.shape[0] < tail:
        ws = np.empty(tail, dtype=out.dtype)
    start = ws.shape[0] - tail
    t = ws[start:start + rows * cols].reshape((rows, cols))
    return ws[:start], t, ws[start + rows * cols:]


# A column at a time, each store follows the last, where a row at a time stores to ``cnt``
# streams (their lines ``rows`` elements apart, at times a multiple of 4 KiB); a column's loads
# take an element of each line, which with many columns no longer stay in L1.  Float32, one
# thread, through the Python call, row / column at a time: 784 x 1 1.3 / 0.5 us, 784 x 4
# 3.8 / 1.4, 1024 x 4 4.8 / 1.6, 4096 x 8 20.2 / 11.4, 784 x 10 3.5 / 3.3, 784 x 16 4.2 / 8.1.
_GATHERED_COLUMNS = 8


@kernel(nrt=False)
def _transposed_block(t, c0, cnt, block):
    """``block[q * rows + j] = t[j, c0 + q]`` for ``q < cnt``: columns of ``t`` as rows (all
    of them: ``t.T`` flattened).  Up to ``_GATHERED_COLUMNS`` columns, a column at a time;
    more, a row at a time."""
    rows = t.shape[0]
    if cnt <= _GATHERED_COLUMNS:
        for q in range(cnt):
            dst = block[q * rows:(q + 1) * rows]
            for j in range(rows):
                dst[j] = t[j, c0 + q]
        return
    for j in range(rows):
        src = t[j, c0:c0 + cnt]
        for q in range(cnt):
            block[q * rows + j] = src[q]


@kernel
def forward_narrow(x, w, bias, code, z, y, ws):
    """:func:`forward` (and :func:`forward_softmax`) for a layer of few units
    (:func:`is_narrow`), same arguments and bits, with ``ws`` of
    :func:`narrow_workspace_size` for this batch: by row tiles (``narrow.narrow_product``)."""
    require_passes(code, y)
    softmax = code == act.SOFTMAX
    m, n = z.shape
    if m == 0 or n == 0:
        return
    # (``x`` as a view of layout "A": the weight gradient's call compiles the same product.)
    narrow_product(strided_view(x, x.shape, x.strides), w, z, EP_BIAS_ACT, bias,
                   act.LINEAR if softmax else code, y, z, 0.0, 0.0, 0.0, workspace_for(ws, z))
    if softmax:
        _softmax_pass(z, y)


#: Below this much work (rows x inputs x :func:`_dots_steps`), :func:`forward_dots` runs on one
#: thread.  Float32 forward, 784 inputs, one thread / two (best of 15 s in turn): one unit,
#: batch 96 4.2 / 4.8 us, 128 5.5 / 5.6, 192 7.9 / 6.9; four units, batch 64 6.5 / 6.9, 96
#: 9.0 / 8.2; 256 inputs to four units, batch 128 5.9 / 6.0, 256 10.7 / 8.6.
DOTS_SERIAL_WORK = 1 << 17


@register_jitable
def _dots_steps(units):
    """The cost of ``units`` units' dot products per row and input, in single units: a group
    of DOT_UNITS units (``_tiles._unit_dots``, three padded to one) costs two (one thread,
    float32: 1024 x 784 by 784 x 4 72 us, a unit at a time 36 us each)."""
    padded = _dots_padded(units)
    return 2 * (padded // DOT_UNITS) + padded % DOT_UNITS


# forward_dots' workspace: the check-in count (``._placement``) and the task counter, each on a
# cache line of its own, then the weights' columns as rows, the products' columns, and each
# thread's lanes (``_LANES``, whole cache lines).
_DOTS_COUNTER = 16
_DOTS_HEAD = 32


def uses_dots(units: int, dtype) -> bool:
    """Whether a layer of ``units`` in ``dtype`` takes its forward product as dot products
    (:func:`forward_dots`): at most ``_tiles.DOT_UNITS_MAX[dtype]`` units.  Decided in Python,
    so that the kernel is compiled only when a program has such a layer."""
    return 0 < units <= DOT_UNITS_MAX[np.dtype(dtype).name]


@register_jitable
def dots_workspace_size(batch, n_in, units, threads):
    """Elements of :func:`forward_dots`' workspace for a batch of ``batch`` on ``threads``
    threads.  Callable from Python and from kernels."""
    return _DOTS_HEAD + _dots_padded(units) * (n_in + batch) + threads * _DOTS_LANES


@register_jitable
def _dots_padded(units):
    """The units :func:`forward_dots` sums: ``units``, and a unit of zero weights to make a
    remainder of DOT_UNITS - 1 a whole group (float32, one thread, 1024 x 784 inputs: a group
    of four units 72 us, a unit at a time 36 us each)."""
    return units + 1 if units % DOT_UNITS == DOT_UNITS - 1 else units


@kernel(nrt=False)
def _dot_rows(x, wt, zt, z, y, bias, code, r0, r1, lanes):
    """Rows ``r0:r1`` of :func:`forward_dots`: for every unit ``j``, ``zt[j * m + i] = x[i] .
    wt[j * k:(j + 1) * k]`` (``_microkernels.dots_4``, four rows at a time while they are in
    L1, then ``dots_1``), then ``z = zt + bias`` and ``y = act(z)``."""
    m, n = z.shape
    k = x.shape[1]
    p = r0
    while p + DOT_ROWS <= r1:
        for j in range(n):
            dots_4(wt[j * k:(j + 1) * k], x, p, zt[j * m:(j + 1) * m], lanes)
        p += DOT_ROWS
    _dots_end(x, wt, zt, z, y, bias, code, r0, r1, p, n, lanes)


@kernel(nrt=False)
def _unit_dot_rows(x, wt, zt, z, y, bias, code, r0, r1, lanes):
    """:func:`_dot_rows` for :func:`forward_unit_dots`: four rows at a time by groups of
    DOT_UNITS units (``_tiles._unit_dots``), the units left a unit at a time (``dots_4``);
    the same bits.  ``zt`` holds the padded units' columns (:func:`_dots_padded`)."""
    m, n = z.shape
    k = x.shape[1]
    nd = zt.shape[0] // m
    p = r0
    while p + DOT_ROWS <= r1:
        j = 0
        while j + DOT_UNITS <= nd:
            _unit_dots(wt[j * k:(j + DOT_UNITS) * k], x, p, zt[j * m:(j + DOT_UNITS) * m], m,
                       lanes)
            j += DOT_UNITS
        for u in range(j, nd):
            dots_4(wt[u * k:(u + 1) * k], x, p, zt[u * m:(u + 1) * m], lanes)
        p += DOT_ROWS
    _dots_end(x, wt, zt, z, y, bias, code, r0, r1, p, n, lanes)


@kernel(nrt=False, inline="always")
def _dots_end(x, wt, zt, z, y, bias, code, r0, r1, p, n, lanes):
    """The rows ``p:r1`` past the last block of four (``dots_1``), then the epilogue of rows
    ``r0:r1``: ``z = zt + bias`` and ``y = act(z)``."""
    m = z.shape[0]
    k = x.shape[1]
    for q in range(p, r1):
        for j in range(n):
            dots_1(wt[j * k:(j + 1) * k], x, q, zt[j * m:(j + 1) * m], lanes)
    zero = zero_of(bias)
    relu = code == act.RELU
    # A unit at a time, each a loop without branches, rather than a view per row (float32
    # 1024 x 64->1 on two threads 8.25 -> 7.59 us).
    for j in range(n):
        zj = zt[j * m:(j + 1) * m]
        if bias.shape[0] > 0:
            bj = bias[j]
            for i in range(r0, r1):
                zj[i] = zj[i] + bj
        if relu:
            for i in range(r0, r1):
                v = zj[i]
                z[i, j] = v
                y[i, j] = v if not v < 0 else zero
        else:
            for i in range(r0, r1):
                v = zj[i]
                z[i, j] = v
                y[i, j] = v
    if _activated_apart(code):
        _activate_rows(y, r0, r1 - r0, 0, n, code)


@kernel(nrt=False)
def forward_dots(x, w, bias, code, z, y, ws):
    """:func:`forward` (and :func:`forward_softmax`) for a layer of one or two units
    (:func:`uses_dots`, :func:`forward_for`), any batch, with ``ws`` of at least
    :func:`dots_workspace_size` elements for this batch and the threads Numba runs now
    (``ValueError`` if shorter).

    Each output is a dot product of a row of ``x`` with a column of ``w``, summed as
    ``_microkernels.dots_4`` sums (16 interleaved FMA chains along the row, a fixed pairwise
    tree, then the inputs past the last multiple of 16), plus the bias.  Its bits depend on
    the number of inputs only: the same for a row whatever the batch, the thread count or the
    rows summed with it, but not those of the general kernels (one chain per output, each FMA
    waiting for the last, over KC blocks), whose tiles would spend 8 or 32 lanes on one unit.
    Float32 1024 x 784 @ 784 x 1, one thread: 48-53 us, against 145 us by the 8-row tiles
    (NumPy's matrix-vector product 43 us).  Threads take runs of four-row blocks.
    """
    wt, zt, lanes, nthreads, ntasks = _dots_setup(x, w, code, z, y, ws)
    _dots_run(x, wt, zt, z, y, bias, _dots_code(code), lanes, nthreads, ntasks, ws, None)
    _dots_finish(code, z, y)


# Apart from forward_dots, so that a layer of one or two units does not compile the groups'
# kernel (float32, cold: one unit's forward 9 s, with the groups 30 s).
@kernel(nrt=False)
def forward_unit_dots(x, w, bias, code, z, y, ws):
    """:func:`forward_dots` for layers of more units (:func:`forward_for`), the same
    arguments and bits: four rows and four units at a time (float32, one thread, 1024 x 784
    @ 784 x 4: 72 us, a unit at a time 144 us), three units with a fourth of zeros."""
    wt, zt, lanes, nthreads, ntasks = _dots_setup(x, w, code, z, y, ws)
    _dots_run(x, wt, zt, z, y, bias, _dots_code(code), lanes, nthreads, ntasks, ws, True)
    _dots_finish(code, z, y)


@kernel(parallel=True, nrt=False)
def _dots_run(x, wt, zt, z, y, bias, code, lanes, nthreads, ntasks, ws, grouped):
    """The rows of :func:`forward_dots` (``grouped`` None: :func:`_dot_rows`) or
    :func:`forward_unit_dots` (:func:`_unit_dot_rows`) on ``nthreads`` threads (none: no
    rows), as :func:`_dots_setup` prepared them."""
    if nthreads == 1:
        _dots_rows(x, wt, zt, z, y, bias, code, 0, z.shape[0], lanes[:_DOTS_LANES], grouped)
    elif nthreads > 1:
        caller_cpu = region_opens(ws, 0)
        for t in prange(nthreads):
            worker_arrives(ws, 0, caller_cpu)
            own = lanes[t * _DOTS_LANES:(t + 1) * _DOTS_LANES]
            while True:
                r0, r1 = _dots_task(ws, z.shape[0], ntasks)
                if r0 >= r1:
                    break
                _dots_rows(x, wt, zt, z, y, bias, code, r0, r1, own, grouped)
            caller_waits(ws, 0, nthreads)


@kernel(nrt=False, inline="always")
def _dots_rows(x, wt, zt, z, y, bias, code, r0, r1, lanes, grouped):
    """:func:`_dot_rows`, or with ``grouped`` (not None: Numba prunes the other branch)
    :func:`_unit_dot_rows`."""
    if grouped is None:
        _dot_rows(x, wt, zt, z, y, bias, code, r0, r1, lanes)
    else:
        _unit_dot_rows(x, wt, zt, z, y, bias, code, r0, r1, lanes)


@kernel(nrt=False)
def _dots_setup(x, w, code, z, y, ws):
    """The dot products' threads and workspace: ``(wt, zt, lanes, nthreads, ntasks)``, the
    weights' columns as rows (padded, :func:`_dots_padded`), the products' columns, the
    threads' lanes, the thread count (0: nothing to do) and the tasks, the task counter
    zeroed.  ``ValueError`` for a short workspace, before anything is written."""
    require_passes(code, y)
    m, n = z.shape
    k = x.shape[1]
    nd = _dots_padded(n)
    nblk = (m + DOT_ROWS - 1) // DOT_ROWS
    nthreads = min(_iget_num_threads(), nblk)
    if m * k * _dots_steps(n) < DOTS_SERIAL_WORK:
        nthreads = 1
    if m == 0 or n == 0:
        nthreads = 0
    elif ws.shape[0] < dots_workspace_size(m, k, n, nthreads):
        raise ValueError(SHORT_WORKSPACE)
    # The weights' columns as rows, so that each dot product reads two contiguous vectors.
    wt = ws[_DOTS_HEAD:_DOTS_HEAD + nd * k]
    zt = ws[_DOTS_HEAD + nd * k:_DOTS_HEAD + nd * (k + m)]
    lanes = ws[_DOTS_HEAD + nd * (k + m):]
    if nthreads > 0:
        _transposed_block(w, 0, n, wt)
        for i in range(n * k, nd * k):
            wt[i] = 0
        ws[_DOTS_COUNTER] = 0
    # Runs of blocks from a shared counter: a thread slowed down does less of the work (each
    # row's bits are its own).
    return wt, zt, lanes, nthreads, min(nblk, 8 * nthreads)


@kernel(nrt=False, inline="always")
def _dots_task(ws, m, ntasks):
    """The rows ``(r0, r1)`` of the next task from the shared counter (empty when none is
    left)."""
    task = fetch_add(ws, _DOTS_COUNTER, 1)
    if task >= ntasks:
        return 0, 0
    nblk = (m + DOT_ROWS - 1) // DOT_ROWS
    r0 = ((nblk * task) // ntasks) * DOT_ROWS
    return r0, min(m, ((nblk * (task + 1)) // ntasks) * DOT_ROWS)


@kernel(nrt=False, inline="always")
def _dots_code(code):
    """The activation the rows apply: none for softmax (:func:`_dots_finish`'s pass)."""
    return act.LINEAR if code == act.SOFTMAX else code


@kernel(nrt=False, inline="always")
def _dots_finish(code, z, y):
    """Softmax over the finished rows."""
    if code == act.SOFTMAX and z.shape[0] > 0 and z.shape[1] > 0:
        _softmax_pass(z, y)


# Batches of one or two (``gemm.uses_rows``) have their own entry points, forward_rows and
# backward_rows, which stream the weights once instead of running a matrix product.  They are
# separate kernels so that each is compiled only when a program uses it (a cold compile of
# every path at once is what users wait for).


@kernel(nrt=False)
def forward_rows(x, w, bias, code, z, y, ws, threads_from):
    """:func:`forward` for a batch of one or two rows and ``in > 0``, the same arguments and
    ``threads_from``: the same bits, unless the weights are large enough to be summed in row
    blocks (``gemm.vector_block_rows``), which the threads share from ``threads_from`` bytes
    of weights times rows on (:func:`rows_threads_from`; see ``gemm.vector_matrix``).
    Element-wise activations only, as :func:`forward`: softmax is
    :func:`forward_rows_softmax`'s."""
    if code == act.SOFTMAX:
        raise ValueError("forward_rows takes element-wise activations; softmax is "
                         "forward_rows_softmax")
    require_passes(code, y)
    vector_matrix(x, w, z, EP_BIAS_ACT, bias, code, y, z, 0.0, 0.0, 0.0, ws, threads_from)


# Apart, as forward_softmax: the softmax pass is compiled only for the layers that use it.
@kernel(nrt=False)
def forward_rows_softmax(x, w, bias, code, z, y, ws, threads_from):
    """:func:`forward_rows` for the softmax activation (``code``, unused, is ``act.SOFTMAX``;
    the same arguments)."""
    vector_matrix(x, w, z, EP_BIAS_ACT, bias, act.LINEAR, y, z, 0.0, 0.0, 0.0, ws,
                  threads_from)
    _softmax_rows_serial(z, y)


def rows_threads_from(trains: bool) -> int:
    """The ``threads_from`` of :func:`forward_rows` for a layer that trains: 0, its weights'
    row blocks split over the threads as in its backward pass (:func:`backward_rows`), so
    that each core keeps its rows in its L2 over the step; or that does not (yet):
    ``gemm.VECTOR_THREADS_BYTES``."""
    return 0 if trains else VECTOR_THREADS_BYTES


@kernel(nrt=False)
def _activation_grad_serial(g, z, y, code, dz):
    m, n = g.shape
    if code == act.SOFTMAX:
        for i in range(m):
            act.softmax_row_backward(g[i], y[i], dz[i])
    else:
        dz_rows(g, z, y, code, 0, m, 0, n, dz, 0, 0)


@kernel(parallel=True)
def activation_grad(g, z, y, code, dz):
    """``dz = g * act'(z, y)`` (the Jacobian-vector product for softmax) on every row, over the
    threads: the pass :func:`backward` leaves to its caller (:func:`dz_over_threads`)."""
    # Blocks of rows, each by the serial kernel: row by row, so the split changes no result.
    # (One parallel loop for softmax and the element-wise activations: each compiles to a
    # function of its own.)
    m = g.shape[0]
    rows = 16
    for b in prange((m + rows - 1) // rows):
        i0 = b * rows
        i1 = min(m, i0 + rows)
        _activation_grad_serial(g[i0:i1], z[i0:i1], y[i0:i1], code, dz[i0:i1])


@kernel(parallel=True)
def column_sums(a, out):
    """``out[j] = sum_i a[i, j]``, summed in row order for every thread count."""
    m, n = a.shape
    block = 64
    nblocks = (n + block - 1) // block
    for jb in prange(nblocks):
        j0 = jb * block
        j1 = min(n, j0 + block)
        for j in range(j0, j1):
            out[j] = 0.0
        for i in range(m):
            ai = a[i]
            for j in range(j0, j1):
                out[j] += ai[j]


#: Up to this many bytes touched by a batch-1 backward pass (the weights, and ``dw`` when it is
#: written rather than applied), the input gradient is taken four rows of weights at a time
#: (``_microkernels.dots_4``); above it, one row at a time (``dots_1``).  Same bits either
#: way.  Four rows are faster on dot products from the caches, one row from memory (one
#: thread, best of 10, ``dots_1`` / ``dots_4``: float32 1024x1024 72 / 58 us, 2048x1024 158 /
#: 118 us, 4096x1024 336 / 365 us; float64 1024x1024 142 / 127 us, 2048x1024 314 / 337 us,
#: 4096x1024 1009 / 1443 us).  Whole backward passes on one thread, best of 9, measured with
#: an earlier one-row kernel (1.1-1.9x slower than ``dots_1``; row at a time / four rows): float32
#: 1024x1024 with SGD applied 395 / 296 us, with ``dw`` written 218 / 122 us; float32
#: 2048x1024 with SGD 796 / 615 us, ``dw`` 468 / 453 us, 4096x1024 1619 / 1633 us and
#: 930 / 1802 us; float64 1024x1024 264 / 215 us and 306 / 330 us, 2048x1024 633 / 743 us
#: and 885 / 1675 us.
ROW_DOTS_MAX_BYTES = 8 << 20
#: Scratch elements per thread for ``dots_4``'s lanes and the levels of their trees.
_LANES = 2 * DOT_ROWS * DOT_LANES
# ... and for forward_dots' groups of DOT_UNITS units (``_tiles._unit_dots``).
_DOTS_LANES = DOT_UNITS * _LANES


@kernel(nrt=False)
def _row_steps(x, d, w, dw, q0, q1, fuse_sgd, lr, l1, l2):
    """Rows ``q0:q1`` of the weight gradient for a batch of one or two, row ``p`` the sum
    ``sum_r x[r, p] * d[r]`` (increasing ``r``), written to ``dw[p]`` or applied to the
    weights' row ``w[p]`` by SGD as it is computed (``update.sgd_value``: the bits of
    ``sgd_step`` on the written row).  A run of rows a call: a call per row cost as much as a
    row of 256 float32 gradients (one thread, ``dw`` of 256x256 written: 7.2 us with a call
    per row, 4.6 us with the step inlined)."""
    wide_vectors()
    units = d.shape[1]
    d0 = d[0]
    if d.shape[0] == 1:
        for p in range(q0, q1):
            x0 = x[0, p]
            wp = w[p]
            if not fuse_sgd:
                dwp = dw[p]
                for j in range(units):
                    dwp[j] = x0 * d0[j]
            elif l1 == 0.0 and l2 == 0.0:
                for j in range(units):
                    wp[j] = sgd_value(wp[j], x0 * d0[j], lr, 0.0, 0.0)
            else:
                for j in range(units):
                    wp[j] = sgd_value(wp[j], x0 * d0[j], lr, l1, l2)
    else:
        d1 = d[1]
        for p in range(q0, q1):
            x0 = x[0, p]
            x1 = x[1, p]
            wp = w[p]
            if not fuse_sgd:
                dwp = dw[p]
                for j in range(units):
                    dwp[j] = fma(x1, d1[j], x0 * d0[j])
            elif l1 == 0.0 and l2 == 0.0:
                for j in range(units):
                    wp[j] = sgd_value(wp[j], fma(x1, d1[j], x0 * d0[j]), lr, 0.0, 0.0)
            else:
                for j in range(units):
                    wp[j] = sgd_value(wp[j], fma(x1, d1[j], x0 * d0[j]), lr, l1, l2)


@kernel(nrt=False)
def _rows_backward(x, w, d, dx, dw, p0, p1, want_dx, fuse_sgd, lr, l1, l2, four, lanes):
    """Rows ``p0:p1`` of the weights for a batch of one or two: ``dx[r, p] = d[r] . w[p]``
    (the weights before the update), then row ``p`` of ``dw`` written or applied by SGD
    (:func:`_row_steps`).  With ``four``, four rows' dot products at a time, then their steps,
    while the four rows are in L1.  ``lanes`` is a scratch of ``_LANES`` elements."""
    batch = d.shape[0]
    if not want_dx:
        _row_steps(x, d, w, dw, p0, p1, fuse_sgd, lr, l1, l2)
        return
    p = p0
    if four:
        while p + DOT_ROWS <= p1:
            for r in range(batch):
                dots_4(d[r], w, p, dx[r], lanes)
            _row_steps(x, d, w, dw, p, p + DOT_ROWS, fuse_sgd, lr, l1, l2)
            p += DOT_ROWS
    for q in range(p, p1):
        for r in range(batch):
            dots_1(d[r], w, q, dx[r], lanes)
        _row_steps(x, d, w, dw, q, q + 1, fuse_sgd, lr, l1, l2)


@kernel(parallel=True, nrt=False)
def _small_batch_backward(x, w, d, dx, dw, want_dx, fuse_sgd, lr, l1, l2, ws):
    """The backward pass of a batch of one or two as one pass over the weights: each row of
    ``w`` is read once for ``dx`` and updated right after (or its ``dw`` row written), instead
    of a vector-matrix product, an outer product and an update each walking the whole
    matrix.  ``ws`` holds at least ``_LANES`` elements (fewer threads are used when it has no
    room for each one's lanes)."""
    n_in, units = w.shape
    # The forward pass's row blocks (``gemm.thread_blocks``).
    kb = _vector_block_rows(n_in, units, _blocking(w)[2])
    nblk = (n_in + kb - 1) // kb
    nthreads = min(_iget_num_threads(), nblk)
    touched = n_in * units * w.itemsize * (1 if fuse_sgd else 2)
    four = touched <= ROW_DOTS_MAX_BYTES
    # Each thread's lanes, then the count of workers that started (``_placement``).
    if ws.shape[0] < _LANES * nthreads + 1:
        nthreads = max(1, min(nthreads, (ws.shape[0] - 1) // _LANES))
    if nthreads == 1:
        _rows_backward(x, w, d, dx, dw, 0, n_in, want_dx, fuse_sgd, lr, l1, l2, four,
                       ws[:_LANES])
        return
    arrived = _LANES * nthreads
    caller_cpu = region_opens(ws, arrived)
    # Rows are independent: any split gives the same bits.
    for t in prange(nthreads):
        worker_arrives(ws, arrived, caller_cpu)
        blk0, blk1 = thread_blocks(nblk, t, nthreads)
        _rows_backward(x, w, d, dx, dw, min(n_in, blk0 * kb), min(n_in, blk1 * kb), want_dx,
                       fuse_sgd, lr, l1, l2, four, ws[t * _LANES:(t + 1) * _LANES])
        caller_waits(ws, arrived, nthreads)


@register_jitable
def dz_apart(batch, n_in, units, code, want_dx):
    """Whether :func:`backward` computes ``dz`` in a pass of its own rather than in the
    packing of the ``dx`` product (for an activation other than the identity)."""
    return (code == act.SOFTMAX or batch <= DIRECT_ROWS or not want_dx
            or is_small(batch, n_in, units) or units == 0)


#: Elements of ``dz`` from which its pass apart is worth a thread launch (which costs more than
#: smaller passes, far more on a busy machine).
DZ_THREADS_MIN = 65536


def dz_over_threads(batch: int, n_in: int, units: int, code: int, want_dx: bool) -> bool:
    """Whether a caller of :func:`backward` should compute ``dz`` first by
    :func:`activation_grad` (over the threads) and pass it as ``g`` with the identity's code.

    :func:`backward` computes a ``dz`` apart (:func:`dz_apart`) on one thread: its parallel
    loop, compiled into every layer's backward pass, was a second of a ReLU layer's cold
    compile, for shapes few programs use (a first layer, ``want_dx`` False, or softmax, of
    64K elements or more); decided in Python, it is compiled when one does.
    """
    return (code != act.LINEAR and batch * units >= DZ_THREADS_MIN
            and dz_apart(batch, n_in, units, code, want_dx))


@kernel
def backward(x, w, bias, z, y, g, code, dz, dw, db, dx, lr, l1w, l2w, l1b, l2b, fuse_sgd,
             ws=None):
    """Gradients of a Dense layer from the upstream gradient ``g = dL/dy``.

    ``dz = g * act'(z)``, ``db = sum_rows(dz)``, ``dw = x.T @ dz``, ``dx = dz @ w.T``, all with
    the weights as they were in the forward pass.  With ``fuse_sgd`` the kernel applies plain
    SGD in place, ``w -= lr * (dw + l1w * sign(w) + 2 * l2w * w)`` (likewise for the bias) as
    the ``dw`` tiles are stored, so ``dw`` is then only a workspace (its contents are
    unspecified); ``db`` holds the bias gradient.  Otherwise ``dw`` and ``db`` hold the raw
    gradients (without penalties) and ``w``, ``bias`` are untouched.

    ``z`` and ``y`` may be the same array when the activation needs only one of them; ``bias``
    and ``db`` are empty without a bias; ``dz`` is a workspace left untouched for the linear
    activation, where ``dz = g``.  A ``dx`` with no rows (shape ``(0, in)``) skips the input
    gradient, which a network's first layer does not need.  ``ws`` is the workspace of
    :func:`forward` (optional likewise).  A ``dz`` computed in a pass apart is computed on one
    thread: for large ones the caller runs :func:`activation_grad` first and passes its
    ``dz`` as ``g`` with the identity's code (:func:`dz_over_threads`).
    """
    require_passes(code, dz)
    if ws is None:
        buf = _layer_ws(w.shape[0], w.shape[1], w)
    else:
        buf = ws
    batch, units = g.shape
    n_in = x.shape[1]
    has_bias = db.shape[0] > 0
    want_dx = dx.shape[0] > 0
    e1 = db[:0]
    # dz: for softmax (whole rows), for shapes that skip packing and for few rows it is computed
    # here; otherwise it is fused into the packing of the dx product below.  With few rows
    # (up to DIRECT_ROWS) that product's tasks are column chunks that each cover every row
    # block, so a derivative fused into their packing would be computed once per chunk;
    # computed here once, dz is then read in place (measured single-threaded, 256 x 256->256
    # float32: 0.91 ms fused, 0.68 ms so).
    d = g
    fused_dz = False
    if code != act.LINEAR:
        d = dz
        if dz_apart(batch, n_in, units, code, want_dx):
            _activation_grad_serial(g, z, y, code, dz)
        else:
            fused_dz = True
    # dx first: it must see the weights before any update.
    if batch > 0 and want_dx:
        if fused_dz:
            _packed(g, w, dx, False, True, EP_STORE, e1, act.LINEAR, dx, dx, 0.0, 0.0, 0.0,
                    code, z, y, dz, False, e1, buf)
        else:
            if units == 0 or is_small(batch, n_in, units):
                acc = buf[:n_in] if buf.shape[0] >= n_in else np.empty(n_in, dtype=dx.dtype)
                _small(d, w, dx, False, True, EP_STORE, e1, act.LINEAR, dx, dx, 0.0, 0.0, 0.0,
                       acc)
            else:
                _packed(d, w, dx, False, True, EP_STORE, e1, act.LINEAR, dx, dx, 0.0, 0.0, 0.0,
                        act.LINEAR, dx[:0], dx[:0], dx[:0], False, e1, buf)
    ep = EP_SGD if fuse_sgd else EP_STORE
    lr_w = lr if fuse_sgd else 0.0
    if batch == 0 or is_small(n_in, units, batch):
        if has_bias:
            column_sums_serial(d, db)
        acc = buf[:units] if buf.shape[0] >= units else np.empty(units, dtype=dw.dtype)
        _small(x, d, dw, True, False, ep, e1, act.LINEAR, dw, w, lr_w, l1w, l2w, acc)
    else:
        e2 = dw[:0]
        _packed(x, d, dw, True, False, ep, e1, act.LINEAR, dw, w, lr_w, l1w, l2w,
                act.LINEAR, e2, e2, e2, has_bias, db, buf)
    if fuse_sgd and has_bias:
        # bias vectors are short: no thread launch
        sgd_step(bias, db, lr, l1b, l2b)


#: Layers on the general kernels of at most this many units take their input gradient (a
#: reduction over the units) by rows above DIRECT_ROWS rows (:func:`backward_for`): float64
#: layers of 9 to 12 units with the AVX-512 tiles, and with the AVX2 ones float32 layers of 9
#: to 12 units and float64 of 5 to 12.  ``dz @ w.T`` alone, float64, two threads, packed
#: product / by rows (NumPy), three runs: 1024 x 784 over 10 units 469-1096 / 404-411 us
#: (221-235), the product's time varying with the output array; 300 x 256 over 12 51.6 / 37.5
#: (25.4); but over 16, 1024 x 784 410-1160 / 522-620 (311-328), 512 x 784 257 / 271 (212).
#: Training step, processes alternating, general / by rows (NumPy): 1024 x 784->10 988-1007 /
#: 936-964 us (1056-1164), 512 x 784->10 496-510 / 471 (556-571), 300 x 256->12 149 / 136
#: (128-131); 1024 x 784->16 1014-1024 / 1116 (1244-1255).
SHORT_DX_UNITS = 12


def backward_for(batch: int, n_in: int, units: int, dtype, want_dx: bool = True):
    """The backward kernel of a layer on the general kernels (neither a batch of one or two nor
    few units, :func:`product_paths`): :func:`backward`, or for at most ``SHORT_DX_UNITS``
    units over more than ``DIRECT_ROWS`` rows, when the input gradient is wanted,
    :func:`backward_dx_by_rows`.  Decided in Python, so that only layers that take it compile
    it."""
    if want_dx and units <= SHORT_DX_UNITS and batch > DIRECT_ROWS:
        return backward_dx_by_rows
    return backward


@kernel
def backward_dx_by_rows(x, w, bias, z, y, g, code, dz, dw, db, dx, lr, l1w, l2w, l1b, l2b,
                        fuse_sgd, ws):
    """:func:`backward` (same arguments and contract) with ``dz`` in a pass apart and the input
    gradient ``dz @ w.T`` by rows (:func:`_input_grad_by_rows`), the packed product's bits:
    for reductions over few units, where the packed product stores a tile every few FMAs
    (:data:`SHORT_DX_UNITS`).  ``ws`` is :func:`workspace_size` long for the layer, whose end
    holds the weights transposed."""
    units = g.shape[1]
    n_in = x.shape[1]
    require_passes(code, dz)
    head, wt, block = _narrow_split(ws, units, n_in, dw)
    d = g
    if code != act.LINEAR:
        d = dz
        _activation_grad_serial(g, z, y, code, dz)
    # dx first: it must see the weights before any update.
    if dx.shape[0] > 0 and units > 0 and n_in > 0:
        _transposed_block(w, 0, units, wt.reshape(units * n_in))
        _input_grad_by_rows(d, wt, dx, block)
    backward(x, w, bias, z, y, d, act.LINEAR, dz, dw, db, dx[:0], lr, l1w, l2w, l1b, l2b,
             fuse_sgd, head)


@kernel(parallel=True, nrt=False)
def _input_grad_by_rows(d, wt, dx, ctr):
    """``dx = d @ wt`` (``wt`` the weights transposed, ``units x in``) row by row, each row of
    ``dx`` by register strips over the few rows of ``wt`` (``gemm.strips``: the FMA chain of
    the packed product, whose reduction of so few steps is one KC block) and stored once;
    contiguous runs of rows over the threads.  ``ctr[0]`` counts the workers that started
    (:mod:`._placement`).

    The packed product of so short a reduction stores a tile every few FMAs, a column of tiles
    at a time, and its time varied by up to 3x from one output to another.  Two threads,
    float32 (Zen 4), ``dz @ w.T`` alone, packed / by rows (NumPy), several processes: 1024 x
    784->10 191-524 / 149-180 us (116-147), 1024 x 1024->10 615-677 / 217-286 us, 512 x
    1024->10 130 / 104 us; float64 1024 x 784->8 381 / 291 us (190).  At 128 rows it was 28 /
    32 us then: so at most DIRECT_ROWS rows take it only with long rows of ``dx`` or one or two
    units (see ``ROWS_DX_INPUTS``)."""
    m = d.shape[0]
    nthreads = min(_iget_num_threads(), m)
    if nthreads == 1 or m * wt.shape[0] * wt.shape[1] < SERIAL_WORK:
        for i in range(m):
            strips(d[i], wt, dx[i])
        return
    caller_cpu = region_opens(ctr, 0)
    for t in prange(nthreads):
        worker_arrives(ctr, 0, caller_cpu)
        r0, r1 = thread_blocks(m, t, nthreads)
        for i in range(r0, r1):
            strips(d[i], wt, dx[i])
        caller_waits(ctr, 0, nthreads)


@kernel(nrt=False)
def _transposed_update(dwt, w, dw, fuse_sgd, lr, l1, l2, block):
    """The weight gradient ``dwt.T`` (``dwt`` is ``units x in``) applied to ``w`` by SGD, row
    by row as the tile stores of the untransposed product apply it (``sgd_step``), or written
    to ``dw``."""
    units, n_in = dwt.shape
    for p0 in range(0, n_in, TRANSPOSE_BLOCK):
        cnt = min(TRANSPOSE_BLOCK, n_in - p0)
        _transposed_block(dwt, p0, cnt, block)
        for q in range(cnt):
            grad = block[q * units:(q + 1) * units]
            if fuse_sgd:
                sgd_step(w[p0 + q], grad, lr, l1, l2)
            else:
                out = dw[p0 + q]
                for j in range(units):
                    out[j] = grad[j]


@kernel
def _weight_grad_transposed(x, w, d, dw, fuse_sgd, lr, l1, l2, ws):
    """The weight gradient of a few-unit layer's backward (:func:`backward_narrow_for`)
    transposed: ``dw.T = d.T @ x`` (the bits of ``x.T @ d``), applied to ``w`` by SGD or
    written to ``dw`` as it is transposed."""
    units = d.shape[1]
    head, dwt, block = _narrow_split(ws, units, x.shape[1], dw)
    product(d, x, dwt, True, False, EP_STORE, dw[0, :0], act.LINEAR, dwt, dwt, 0.0, 0.0, 0.0,
            head)
    _transposed_update(dwt, w, dw, fuse_sgd, lr, l1, l2, block)


@kernel(nrt=False)
def _weight_grad_span(x, dcols, dwt, j0, j1, part, gpart):
    """Columns ``j0:j1`` of ``dwt = dcols @ x`` (``dcols`` holds the columns of ``dz`` as rows,
    ``units x batch``), a strip of columns at a time, by register strips
    (``gemm.strips_between``) over KC-row blocks of ``x``.  A block's sums land in ``part`` (a
    row of ``x``'s width) and are added to the running sums in increasing block order, as the
    packed product adds its KC blocks: the bits of ``x.T @ dz``.  For each strip and block, the
    units read the same lines of ``x``, from this core's cache after the first.  With
    ``gpart`` (DOT_UNITS rows of ``x``'s width; ``None`` compiles without), four units at a
    time, or three (``_tiles._unit_strip``, the same bits), their block sums in ``gpart``."""
    m = x.shape[0]
    units = dwt.shape[0]
    KC = _blocking(dwt)[2]
    sw = _strip_width(dwt)
    for s0 in range(j0, j1, sw):
        s1 = min(j1, s0 + sw)
        for pc in range(0, m, KC):
            xb = x[pc:min(m, pc + KC)]
            apart = 0
            if gpart is not None:
                # Groups of four units, and of three for what is left.
                while units - apart >= DOT_UNITS - 1:
                    g = min(DOT_UNITS, units - apart)
                    dg = dcols[apart:apart + g, pc:pc + xb.shape[0]]
                    if pc == 0:
                        _unit_strips_between(dg, xb, s0, s1, dwt[apart:apart + g])
                    else:
                        _unit_strips_between(dg, xb, s0, s1, gpart[:g])
                        for q in range(g):
                            o = dwt[apart + q]
                            pq = gpart[q]
                            for j in range(s0, s1):
                                o[j] = pq[j] + o[j]
                    apart += g
            for u in range(apart, units):
                dcol = dcols[u, pc:pc + xb.shape[0]]
                if pc == 0:
                    strips_between(dcol, xb, s0, s1, dwt[u])
                    continue
                strips_between(dcol, xb, s0, s1, part)
                o = dwt[u]
                for j in range(s0, s1):
                    o[j] = part[j] + o[j]


@kernel(nrt=False, inline="always")
def _unit_strips_between(d, b, j0, j1, out):
    """``out[u, j0:j1] = d[u] @ b[:, j0:j1]`` for the three or four rows of ``d``: by
    ``_tiles._unit_strip`` while whole strips fit, the columns left a unit at a time
    (``gemm.strips_between``); one FMA chain per element either way."""
    width = _unit_strip_width(out)
    j = j0
    while j + width <= j1:
        _unit_strip(d, b, j, out)
        j += width
    if j < j1:
        for u in range(d.shape[0]):
            strips_between(d[u], b, j, j1, out[u])


@kernel(parallel=True, nrt=False)
def _weight_grad_by_strips(x, d, dwt, dcols, part, ctr, gpart):
    """``dwt = d.T @ x``, the weight gradient transposed (``units x in``), by
    :func:`_weight_grad_span`: contiguous runs of strips of columns over the threads (output
    columns, so the bits are the same for any thread count), unless the work is below
    ``gemm.SERIAL_WORK``.  ``dcols`` (``units x batch``) receives ``d``'s columns, ``part``
    holds a row of partial sums per thread (at most its rows of threads run), ``gpart``
    (``None``, or DOT_UNITS such rows per thread) those of the units' groups, and ``ctr[0]``
    counts the workers that started (:mod:`._placement`)."""
    m, n_in = x.shape
    units = d.shape[1]
    for u in range(units):
        for i in range(m):
            dcols[u, i] = d[i, u]
    sw = _strip_width(dwt)
    nstrips = (n_in + sw - 1) // sw
    nthreads = min(_iget_num_threads(), nstrips, part.shape[0])
    if nthreads == 1 or m * n_in * units < SERIAL_WORK:
        _weight_grad_span(x, dcols, dwt, 0, n_in, part[0], _thread_rows(gpart, 0))
        return
    caller_cpu = region_opens(ctr, 0)
    for t in prange(nthreads):
        worker_arrives(ctr, 0, caller_cpu)
        s0, s1 = thread_blocks(nstrips, t, nthreads)
        _weight_grad_span(x, dcols, dwt, s0 * sw, min(n_in, s1 * sw), part[t],
                          _thread_rows(gpart, t))
        caller_waits(ctr, 0, nthreads)


# (Not inlined: the parallel region's array analysis rejects the two inlined copies.)
@kernel(nrt=False)
def _thread_rows(gpart, t):
    """Thread ``t``'s rows of ``gpart`` (``None`` stays ``None``)."""
    if gpart is None:
        return None
    return gpart[t]


@kernel
def _weight_grad_strips(x, w, d, dw, fuse_sgd, lr, l1, l2, ws, grouped):
    """The weight gradient of a few-unit layer (:func:`backward_narrow_for`) by strips:
    ``dw.T = d.T @ x`` as rows of ``x`` weighted by ``d``'s columns and summed
    (:func:`_weight_grad_by_strips`), every lane of the vectors a column of ``x``, with
    ``grouped`` (``None`` compiles without) three or four units at a time; then applied to
    ``w`` by SGD or written to ``dw`` as it is transposed."""
    m, n_in = x.shape
    units = d.shape[1]
    head, dwt, block = _narrow_split(ws, units, n_in, dw)
    threads = _iget_num_threads()
    need = _strips_head(m, n_in, units, threads)
    if head.shape[0] < need:
        head = np.empty(need, dtype=dw.dtype)
    rows = head[_STRIPS_COUNTER:_STRIPS_COUNTER + units * m]
    part = head[_STRIPS_COUNTER + units * m:_STRIPS_COUNTER + units * m + threads * n_in]
    # (Numba prunes the branch not taken, so gpart has one type.)
    if grouped is None:
        gpart = None
    else:
        gpart = head[_STRIPS_COUNTER + units * m + threads * n_in:need].reshape(
            (threads, DOT_UNITS, n_in))
    _weight_grad_by_strips(x, d, dwt, rows.reshape((units, m)), part.reshape((threads, n_in)),
                           head[:_STRIPS_COUNTER], gpart)
    _transposed_update(dwt, w, dw, fuse_sgd, lr, l1, l2, block)


def _backward_narrow(dx_by_rows: bool, dw_by: str):
    """The variant of :func:`backward` for a layer of few units that computes the input
    gradient by rows or as a product and the weight gradient by ``dw_by`` (:data:`DW_BY`: row
    tiles, transposed or by strips), as :func:`backward_narrow_for` picks them.  The choices
    are constants of the closure, whose branches Numba prunes before typing: a variant
    compiles only the kernels it calls (a float32 10-unit layer at a batch of 32 no longer
    compiles the row-by-row input gradient and the transposed weight gradient, which took 8 of
    the 51 s of a cold compile of the README's model)."""
    transposed = dw_by == "transposed"
    by_strips = dw_by in ("strips", "unit_strips")
    # (None: the strips' kernel compiled without the groups of units.)
    grouped = True if dw_by == "unit_strips" else None

    @kernel
    def backward_narrow(x, w, bias, z, y, g, code, dz, dw, db, dx, lr, l1w, l2w, l1b, l2b,
                        fuse_sgd, ws):
        """:func:`backward` for a layer of few units (:func:`is_narrow`), same arguments and
        contract, with ``ws`` of :func:`narrow_workspace_size` for this batch: ``dz`` in a pass
        apart, ``dx = dz @ w.T`` as a product or by rows (:func:`_input_grad_by_rows`), and
        ``dw = x.T @ dz`` by row tiles (``narrow.narrow_product``), transposed
        (:func:`_weight_grad_transposed`) or by strips (:func:`_weight_grad_strips`), applied by
        SGD or written."""
        units = g.shape[1]
        n_in = x.shape[1]
        require_passes(code, dz)
        if units == 0 or n_in == 0:
            return
        head, wt, block = _narrow_split(ws, units, n_in, dw)
        d = g
        if code != act.LINEAR:
            d = dz
            _activation_grad_serial(g, z, y, code, dz)
        e1 = db[:0]
        # dx first: it must see the weights before any update.
        if dx.shape[0] > 0:
            if dx_by_rows:
                _transposed_block(w, 0, units, wt.reshape(units * n_in))
                _input_grad_by_rows(d, wt, dx, block)
            else:
                product(d, w, dx, False, True, EP_STORE, e1, act.LINEAR, dx, dx, 0.0, 0.0, 0.0,
                        head)
        if db.shape[0] > 0:
            column_sums_serial(d, db)
        if by_strips:
            _weight_grad_strips(x, w, d, dw, fuse_sgd, lr, l1w, l2w, ws, grouped)
        elif transposed:
            _weight_grad_transposed(x, w, d, dw, fuse_sgd, lr, l1w, l2w, ws)
        else:
            xt = x.T
            narrow_product(strided_view(xt, xt.shape, xt.strides), d, dw,
                           EP_SGD if fuse_sgd else EP_STORE, e1, act.LINEAR, dw, w,
                           lr if fuse_sgd else 0.0, l1w, l2w, workspace_for(ws, dw))
        if fuse_sgd and db.shape[0] > 0:
            sgd_step(bias, db, lr, l1b, l2b)

    return backward_narrow


#: How a few-unit layer's backward computes the weight gradient: by row tiles, transposed, by
#: strips or by strips of several units at once (see :func:`backward_narrow_for`).
DW_BY = ("tiles", "transposed", "strips", "unit_strips")
#: :func:`backward_narrow_for`'s kernels by ``(dx_by_rows, dw_by)``; each compiles on its
#: first call.
_BACKWARD_NARROW = {(rows, dw_by): _backward_narrow(rows, dw_by)
                    for rows in (False, True) for dw_by in DW_BY}


# The weight gradient ``x.T @ dz`` of a few-unit layer by row tiles reads ``x`` down its
# columns, eight or six at a time, and took about the same time whatever the units (float32
# 1024 x 784 over 4, 8, 10 units: 136, 133, 138 us, two threads, Zen 4); transposed,
# ``dz.T @ x`` is a packed product of one MR-row panel per MR units.  Transposed / row tiles
# (NumPy's ``x.T @ dz``), float32, units: 4: 89 / 136 us (112) over 1024 rows, 26 / 37 (17)
# over 256, 9.4 / 11.5 (4.2) over 32; 6 over 128: 21 / 25 (15); 8: 78 / 133 (149) over 1024,
# 14.5 / 11.1 (9.1) over 32; 8 at 64 inputs over 256: 3.7 / 6.1 (3.6); 10 (two panels): 150 /
# 138 (190) over 1024, 28 / 24 (25) over 128, 15 / 11 (8.7) over 32.  float64, 3 to 8 units:
# 135-152 / 137-154 over 1024, 14-15 / 10.5-12.5 over 32, 11.4 / 7.9 at 100 inputs over 256.
# So transposed for float32 layers of one panel of units, otherwise row tiles.
#
# Layers of one or two units take it by strips (every vector lane a column of ``x``, where the
# tiles fill one or two lanes of eight): strips / row tiles (NumPy), two threads, float32
# 784 x 1 over 32 rows 1.6 / 9.3 us (2.1), over 128 5.0 / 23.1 (4.8), over 1024 31 / 132 (28);
# 784 x 2 over 1024 57 / 142 (133); float64 784 x 1 over 1024 55 / 149 (47), 784 x 2 over
# 128 21 / 23 (14).  For three and four units the strips lost in float64 (100 x 4 over 256
# rows, 784 x 4 over 1024), each unit reading the strip of ``x`` again; with the AVX-512 tiles
# they take the strip of ``x`` for three or four units at once (``_tiles._unit_strip``, up to
# ``_tiles.STRIPS_UNITS_MAX`` units).
#: Layers of at most this many units take their input gradient by rows at any batch and (all
#: tile sets) their weight gradient by strips a unit at a time.
STRIPS_UNITS = 2
# The input gradient ``dz @ w.T`` by rows (each row of ``dx`` from register strips) against
# the packed product, two threads, float32 (Zen 4), NumPy's in brackets: 32 x 784 over 3 4.7 /
# 9.8 us (5.5), over 4 6.2 / 10.4 (6.0), over 10 9.5 / 13.4 (9.8); 128 x 784 over 4 17.6 / 24.7
# (16.8), over 10 26.5 / 26.5 (43.1); 256 x 256 over 4 9.7 / 21.9 (12.3); 32 x 128 over 4 1.3 /
# 2.9 (2.1); but 256 x 128 over 4 9.4 / 8.9 (6.7) and 256 x 64 over 10 9.3 / 6.8 (6.2); float64
# 256 x 100 over 4 18.2 / 15.1 (9.4), 256 x 128 over 4 13.5 / 19.2 (11.1); at 128 inputs
# float32 128 x 128 over 10 7.7 / 7.1 (6.1).  From 256 inputs, then, where the row-by-row
# kernel is not compiled for nothing (the Quick start's 128->10 output layer: its cold compile
# took 36 s, 43 s with that kernel).  A product of one or two steps takes the direct path,
# whose loop runs element by element (float32 128 x 784 over 1, training step 152 against
# 45 us by rows).
#: From this many inputs a few-unit layer's input gradient runs by rows at any batch.
ROWS_DX_INPUTS = 256


def backward_narrow_for(batch: int, n_in: int, units: int, dtype, want_dx: bool = True):
    """The backward kernel of a few-unit layer (:func:`uses_narrow`) of ``n_in`` inputs and
    ``units`` for a batch of ``batch`` (same arguments and contract as :func:`backward`): the
    input gradient, when wanted, by rows (see :func:`_input_grad_by_rows`) for layers of at
    most ``STRIPS_UNITS`` units, of ``ROWS_DX_INPUTS`` inputs or more, or above
    ``DIRECT_ROWS`` rows, else as a product; the weight gradient by strips for layers of at
    most ``STRIPS_UNITS`` units, by strips of three or four units at once up to
    ``_tiles.STRIPS_UNITS_MAX``, transposed for float32 layers of at most MR units (one panel
    of the general tiles' rows), else by row tiles."""
    few = units <= STRIPS_UNITS
    rows = want_dx and (few or n_in >= ROWS_DX_INPUTS or batch > DIRECT_ROWS)
    if few:
        return _BACKWARD_NARROW[rows, "strips"]
    name = np.dtype(dtype).name
    if units <= STRIPS_UNITS_MAX[name]:
        return _BACKWARD_NARROW[rows, "unit_strips"]
    transposed = name == "float32" and units <= BLOCKING[name][0]
    return _BACKWARD_NARROW[rows, "transposed" if transposed else "tiles"]


@kernel(nrt=False)
def backward_rows(x, w, bias, z, y, g, code, dz, dw, db, dx, lr, l1w, l2w, l1b, l2b, fuse_sgd,
                  ws):
    """:func:`backward` for a batch of one or two rows with ``in, units > 0`` (same
    arguments, same contract): one pass over the weights computes ``dx`` from each row and
    then updates it (or writes ``dw``)."""
    if ws.shape[0] < _LANES:
        raise ValueError(SHORT_WORKSPACE)
    require_passes(code, dz)
    d = g
    if code != act.LINEAR:
        d = dz
        _activation_grad_serial(g, z, y, code, dz)
    if db.shape[0] > 0:
        column_sums_serial(d, db)
    _small_batch_backward(x, w, d, dx, dw, dx.shape[0] > 0, fuse_sgd, lr, l1w, l2w, ws)
    if fuse_sgd and db.shape[0] > 0:
        sgd_step(bias, db, lr, l1b, l2b)


def empty_bias(dtype):
    """The (0,) array that stands for "no bias" in these kernels."""
    return np.empty(0, dtype=dtype)
