"""Packing of GEMM operands into the panel layouts the micro-kernels read.

An A panel holds ``MR`` rows of ``op(A)`` for ``kc`` reduction steps, step-major
(``ap[p * MR + r]``); a B panel holds ``NR`` columns (``bp[p * NR + c]``).  Rows or columns past
the matrix edge are zero, so the micro-kernel always runs on full tiles and the store keeps only
the valid part.  Transposed operands are read here, in place: nothing is materialised.

Two Dense-layer fusions live here because packing is the one pass that touches every element of
dZ anyway: the activation derivative ``dz = g * act'(z)`` while packing dZ as the A operand of
``dx = dz @ w.T``, and the bias gradient (column sums of dZ, summed in row order) while packing
dZ as the B operand of ``dw = x.T @ dz``.
"""

import numpy as np

from fastdense.kernels import activation as act
from fastdense.kernels._codegen import copy_n, kernel, no_inline, transpose8
from fastdense.kernels._tiles import _blocking
from fastdense.kernels.activation_passes import DERIVATIVE, call_derivative_pass, pass_address


@kernel(nrt=False)
def _transpose8(s0, s1, s2, s3, s4, s5, s6, s7, dst):
    """``dst[p, r] = s_r[p]``: eight equal-length source rows into the 8 columns of a
    ``(len, 8)`` view, element by element (LLVM makes one scalar load and store of each, as
    ``inspect_asm`` shows): for the steps left after :func:`transpose8`'s 8 x 8 blocks.

    The 2-D view is indexed by the loop counter and constants, so no store pays for
    negative-index (wraparound) arithmetic, which a flat ``dst[p * 8 + r]`` costs (measured 4x
    slower).
    """
    for p in range(s0.shape[0]):
        dst[p, 0] = s0[p]
        dst[p, 1] = s1[p]
        dst[p, 2] = s2[p]
        dst[p, 3] = s3[p]
        dst[p, 4] = s4[p]
        dst[p, 5] = s5[p]
        dst[p, 6] = s6[p]
        dst[p, 7] = s7[p]


@kernel(nrt=False)
def _pack_rows8(src, i, p0, kc, dst):
    """Pack 8 full rows ``src[i:i + 8, p0:p0 + kc]`` step-major: ``dst[p * 8 + r]``, 8 x 8
    blocks transposed in registers, the steps left over one by one."""
    flat = src.reshape(-1)
    lds = src.shape[1]
    k8 = (kc // 8) * 8
    for p in range(0, k8, 8):
        transpose8(dst, p * 8, 8, flat, i * lds + p0 + p, lds)
    if k8 < kc:
        q0 = p0 + k8
        q1 = p0 + kc
        _transpose8(src[i, q0:q1], src[i + 1, q0:q1], src[i + 2, q0:q1], src[i + 3, q0:q1],
                    src[i + 4, q0:q1], src[i + 5, q0:q1], src[i + 6, q0:q1], src[i + 7, q0:q1],
                    dst[k8 * 8:kc * 8].reshape(kc - k8, 8)[:, 0:8])


@kernel(nrt=False)
def _pack_cols8(src, j, p0, kc, dst):
    """``dst[p, c] = src[j + c, p0 + p]`` for ``c < 8``: 8 rows of a transposed B into the
    ``(kc, 8)`` view ``dst`` of a panel."""
    _transpose8(src[j, p0:p0 + kc], src[j + 1, p0:p0 + kc], src[j + 2, p0:p0 + kc],
                src[j + 3, p0:p0 + kc], src[j + 4, p0:p0 + kc], src[j + 5, p0:p0 + kc],
                src[j + 6, p0:p0 + kc], src[j + 7, p0:p0 + kc], dst)


# Called from A packing and both activation-gradient kernels: not linked into each (see
# ``gemm._epilogue_row``).
@kernel(nrt=False, link=False, error_model="numpy")
def dz_rows(g, z, y, dcode, i0, mr, p0, kc, dz, di, dp):
    """``dz = g * act'(z, y)`` on rows ``i0:i0+mr``, steps ``p0:p0+kc`` (contiguous rows),
    written to ``dz[di:di + mr, dp:dp + kc]``.

    ReLU has a loop here, the other activations their derivative pass
    (:mod:`.activation_passes`, compiled when a layer first uses the activation): each
    activation's loop of its own, which LLVM makes branch-free and vectorizes.  With the code
    read per element (:func:`fastdense.kernels.activation.derivative`) it neither vectorizes
    nor removes the branches, and ReLU's mispredict on every other element (measured
    1024 x 256 float32, single-threaded: 1.44 ms generic, 52 us so).  Without a pass installed
    (the layer kernels refuse that before they start) the block is set to NaN.
    """
    if dcode == act.RELU:
        for i in range(i0, i0 + mr):
            gi = g[i, p0:p0 + kc]
            zi = z[i, p0:p0 + kc]
            dzi = dz[di + i - i0, dp:dp + kc]
            for p in range(kc):
                dzi[p] = gi[p] * act.relu_derivative(zi[p])
        return
    fn = pass_address(DERIVATIVE, dz, dcode)
    if fn != 0:
        call_derivative_pass(fn, g, z, y, i0, mr, p0, kc, dz, di, dp)
        return
    for i in range(i0, i0 + mr):
        dzi = dz[di + i - i0, dp:dp + kc]
        for p in range(kc):
            dzi[p] = np.nan


#: Steps of a transposed A with rows of a multiple of 4 KiB packed for all its panels at a time
#: (see :func:`pack_a`).
GROUP_STEPS = 8


@kernel(nrt=False)
def pack_a(a, trans_a, i0, mr, p0, kc, ap, dcode, z, y, dz, write_dz, scratch):
    """Pack rows ``i0:i0+mr`` of ``op(a)``, steps ``p0:p0+kc``, into MR-row panels in ``ap``.

    With ``dcode`` not LINEAR (``a`` not transposed), ``a`` is the upstream gradient ``g`` and
    what is packed is ``g * act'(z, y)``, written to ``dz`` when ``write_dz``, otherwise a
    panel at a time to ``scratch`` (at least ``MR * kc`` elements).
    """
    no_inline()
    MR = _blocking(ap)[0]
    npan = (mr + MR - 1) // MR
    src = a
    code = dcode
    if dcode != act.LINEAR and not trans_a and write_dz:
        # dz rows first (contiguous, vectorized), then pack them as a plain operand.
        dz_rows(a, z, y, dcode, i0, mr, p0, kc, dz, i0, p0)
        src = dz
        code = act.LINEAR
    if trans_a:
        # op(a)[i, p] = a[p, i]: each step of a panel is a contiguous run of a row of ``a``,
        # one move of MR elements (a constant-size copy_n: a few vector moves; a loop of MR
        # element copies stayed scalar, each store possibly aliasing the next load).  Rows of
        # a multiple of 4 KiB all fall in the same few L1 sets: there GROUP_STEPS steps are
        # packed for every full panel before the next, while their lines are in L1.
        full = mr // MR
        group = GROUP_STEPS if (src.shape[1] * src.itemsize) % 4096 == 0 else kc
        for g0 in range(0, kc, group):
            g1 = min(kc, g0 + group)
            for q in range(full):
                dst = ap[q * MR * kc:(q + 1) * MR * kc]
                c = i0 + q * MR
                for p in range(g0, g1):
                    copy_n(dst, p * MR, src[p0 + p], c, MR)
        if full < npan:
            # The partial panel, zero-padded: 2-D views indexed by the loop counters.
            rows = mr - full * MR
            s2 = src[p0:p0 + kc, i0 + full * MR:i0 + mr]
            d2 = ap[full * MR * kc:npan * MR * kc].reshape(kc, MR)
            for p in range(kc):
                for r in range(rows):
                    d2[p, r] = s2[p, r]
                for r in range(rows, MR):
                    d2[p, r] = 0
        return
    # ReLU's derivative stays fused into the packing loop below; the other activations' go
    # through ``scratch`` (see there).
    relu = code == act.RELU
    for q in range(npan):
        r0 = q * MR
        rows = min(MR, mr - r0)
        dst = ap[q * MR * kc:(q + 1) * MR * kc]
        s = src
        si = i0 + r0
        sp = p0
        if code != act.LINEAR and not relu:
            # The panel's dz rows by dz_rows' loops into L1, then packed as a plain
            # operand: the derivative of every activation inlined into a loop here was
            # 0.9 s of the cold compile.  ReLU's, the common case, stays fused below
            # (cheap to compile; through the scratch, 1-3% slower training steps at 300
            # rows).
            s = scratch[:rows * kc].reshape(rows, kc)
            dz_rows(a, z, y, code, si, rows, p0, kc, s, 0, 0)
            si = 0
            sp = 0
        if MR == 8 and rows == 8 and not relu:
            _pack_rows8(s, si, sp, kc, dst)
        else:
            for r in range(rows):
                i = si + r
                sr = s[i, sp:sp + kc]
                if relu:
                    zi = z[i, p0:p0 + kc]
                    for p in range(kc):
                        dst[p * MR + r] = sr[p] * act.relu_derivative(zi[p])
                else:
                    for p in range(kc):
                        dst[p * MR + r] = sr[p]
        for r in range(rows, MR):
            for p in range(kc):
                dst[p * MR + r] = 0


@kernel(nrt=False)
def pack_b(b, trans_b, p0, kc, j0, nc, bp, colsum, db):
    """Pack columns ``j0:j0+nc`` of ``op(b)``, steps ``p0:p0+kc``, into NR-column panels.

    With ``colsum``, ``db[j] += sum_p op(b)[p, j]`` over the packed steps in increasing ``p``
    (``db`` is zeroed by the caller before the first block).
    """
    no_inline()
    NR = _blocking(bp)[1]
    npan = (nc + NR - 1) // NR
    q_rows = 0
    if not trans_b:
        # Full panels of a row-major B, four at a time, step by step: each source row is read
        # 4 * NR contiguous elements at a time (512 bytes in float32) instead of NR per panel,
        # which the hardware prefetchers follow; measured 1.67 -> 0.91 ms for a 4096 x 1024
        # float32 B, single-threaded (a plain copy of it takes 0.83 ms).
        q_rows = nc // NR
        for g0 in range(0, q_rows, 4):
            g1 = min(q_rows, g0 + 4)
            for p in range(kc):
                row = b[p0 + p]
                for q in range(g0, g1):
                    # One constant-size move per panel row (a copy loop would check for
                    # aliasing each time).
                    copy_n(bp, q * NR * kc + p * NR, row, j0 + q * NR, NR)
                if colsum:
                    s = db[j0 + g0 * NR:j0 + g1 * NR]
                    src = row[j0 + g0 * NR:j0 + g1 * NR]
                    for c in range(s.shape[0]):
                        s[c] += src[c]
    for q in range(npan):
        c0 = q * NR
        cols = min(NR, nc - c0)
        dst = bp[q * NR * kc:(q + 1) * NR * kc]
        if trans_b and cols == NR and NR % 8 == 0 and not colsum:
            # Eight source rows at a time, 8 x 8 blocks transposed in registers (the remaining
            # steps one by one); in chunks of 64 steps, so the panel lines are complete before
            # they leave L1.  Single-threaded float32, a 784 x 512 B: 134 us element by
            # element, 60 us so.
            d2 = dst.reshape(kc, NR)
            flat = b.reshape(-1)
            ldb = b.shape[1]
            for pb in range(0, kc, 64):
                pl = min(64, kc - pb)
                p8 = (pl // 8) * 8
                for c8 in range(0, NR, 8):
                    src0 = (j0 + c0 + c8) * ldb + p0 + pb
                    for p in range(0, p8, 8):
                        transpose8(dst, (pb + p) * NR + c8, NR, flat, src0 + p, ldb)
                    if p8 < pl:
                        _pack_cols8(b, j0 + c0 + c8, p0 + pb + p8, pl - p8,
                                    d2[pb + p8:pb + pl, c8:c8 + 8])
        elif trans_b:
            # op(b)[p, j] = b[j, p]: read each source row once, contiguously.
            for c in range(cols):
                src = b[j0 + c0 + c, p0:p0 + kc]
                for p in range(kc):
                    dst[p * NR + c] = src[p]
                if colsum:
                    s = db[j0 + c0 + c]
                    for p in range(kc):
                        s += src[p]
                    db[j0 + c0 + c] = s
            for c in range(cols, NR):
                for p in range(kc):
                    dst[p * NR + c] = 0
        else:
            if q < q_rows:
                continue
            for c in range(NR * kc):
                dst[c] = 0
            for p in range(kc):
                copy_n(dst, p * NR, b[p0 + p], j0 + c0, cols)
            if colsum:
                s = db[j0 + c0:j0 + c0 + cols]
                for p in range(kc):
                    src = b[p0 + p, j0 + c0:j0 + c0 + cols]
                    for c in range(cols):
                        s[c] += src[c]


@kernel(nrt=False)
def pack_b_rows(b, p0, kc, r0, r1, j0, nc, bp):
    """Steps ``r0:r1`` of :func:`pack_b`'s packing of a row-major ``b[p0:p0 + kc, j0:j0 + nc]``
    (same layout, no column sums), by whole source rows.

    Each row is read once from end to end, which the hardware prefetchers stream from memory,
    so that threads can share a large B block by rows rather than by panels.  Eight rows at a
    time, panel by panel: eight streams in flight, and each panel gets eight contiguous steps
    (packing 4096x1024 float64 from memory: 2.8 -> 1.8 ms single-threaded, against one row at
    a time; sixteen rows were as slow as one).
    """
    no_inline()
    NR = _blocking(bp)[1]
    full = nc // NR
    cols = nc - full * NR
    for p in range(r0, r1, 8):
        rows = min(8, r1 - p)
        for q in range(full):
            for g in range(rows):
                copy_n(bp, q * NR * kc + (p + g) * NR, b[p0 + p + g], j0 + q * NR, NR)
    if cols > 0:
        for p in range(r0, r1):
            d = bp[full * NR * kc + p * NR:full * NR * kc + (p + 1) * NR]
            copy_n(d, 0, b[p0 + p], j0 + full * NR, cols)
            for c in range(cols, NR):
                d[c] = 0


@kernel(nrt=False)
def pack_b_gathered(b, p0, kc, j0, n0, j1, n1, bp):
    """Pack one NR-column panel of a row-major ``b``, steps ``p0:p0 + kc``, gathered from two
    runs of columns: ``n0`` from ``j0``, then ``n1`` from ``j1`` (``n0 + n1 <= NR``), the rest
    zero.

    The edge panel of a B read in place on its cache lines (see ``_phase`` in gemm.py): the
    columns before B's first line boundary and those after its last whole panel, one panel
    rather than two partial ones.
    """
    no_inline()
    NR = _blocking(bp)[1]
    for c in range(NR * kc):
        bp[c] = 0
    for p in range(kc):
        row = b[p0 + p]
        # (Only runs that have columns: each copy is a call for its variable size.)
        if n0 > 0:
            copy_n(bp, p * NR, row, j0, n0)
        if n1 > 0:
            copy_n(bp, p * NR + n0, row, j1, n1)
