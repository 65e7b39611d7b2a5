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

from fastdense.kernels import activation as act
from fastdense.kernels._codegen import kernel
from fastdense.kernels._tiles import _blocking


@kernel
def pack_a(a, trans_a, i0, mr, p0, kc, ap, dcode, z, y, dz, write_dz):
    """Pack rows ``i0:i0+mr`` of ``op(a)``, steps ``p0:p0+kc``, into MR-row panels in ``ap``.

    With ``dcode`` not LINEAR, ``a`` is the upstream gradient ``g`` and what is packed is
    ``g * act'(z, y)`` (also written to ``dz`` when ``write_dz``).
    """
    MR = _blocking(ap)[0]
    npan = (mr + MR - 1) // MR
    for q in range(npan):
        r0 = q * MR
        rows = min(MR, mr - r0)
        dst = ap[q * MR * kc:(q + 1) * MR * kc]
        if trans_a:
            # op(a)[i, p] = a[p, i]: each step is a contiguous run of the panel's rows.
            for p in range(kc):
                src = a[p0 + p, i0 + r0:i0 + r0 + rows]
                d = dst[p * MR:p * MR + MR]
                for r in range(rows):
                    d[r] = src[r]
                for r in range(rows, MR):
                    d[r] = 0
        else:
            for r in range(rows):
                i = i0 + r0 + r
                src = a[i, p0:p0 + kc]
                if dcode == act.LINEAR:
                    for p in range(kc):
                        dst[p * MR + r] = src[p]
                else:
                    zi = z[i, p0:p0 + kc]
                    yi = y[i, p0:p0 + kc]
                    if dcode == act.RELU:
                        for p in range(kc):
                            zp = zi[p]
                            dst[p * MR + r] = src[p] * (1.0 if zp > 0 else (0.0 if zp <= 0 else zp))
                    else:
                        for p in range(kc):
                            dst[p * MR + r] = src[p] * act.derivative(dcode, zi[p], yi[p])
                    if write_dz:
                        dzi = dz[i, p0:p0 + kc]
                        for p in range(kc):
                            dzi[p] = dst[p * MR + r]
            for r in range(rows, MR):
                for p in range(kc):
                    dst[p * MR + r] = 0


@kernel
def pack_b(b, trans_b, p0, kc, j0, nc, bp, colsum, db):
    """Pack columns ``j0:j0+nc`` of ``op(b)``, steps ``p0:p0+kc``, into NR-column panels.

    With ``colsum``, ``db[j] += sum_p op(b)[p, j]`` over the packed steps in increasing ``p``
    (``db`` is zeroed by the caller before the first block).
    """
    NR = _blocking(bp)[1]
    npan = (nc + NR - 1) // NR
    for q in range(npan):
        c0 = q * NR
        cols = min(NR, nc - c0)
        dst = bp[q * NR * kc:(q + 1) * NR * kc]
        if trans_b:
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
            for p in range(kc):
                src = b[p0 + p, j0 + c0:j0 + c0 + cols]
                d = dst[p * NR:p * NR + NR]
                for c in range(cols):
                    d[c] = src[c]
                for c in range(cols, NR):
                    d[c] = 0
            if colsum:
                s = db[j0 + c0:j0 + c0 + cols]
                for p in range(kc):
                    src = b[p0 + p, j0 + c0:j0 + c0 + cols]
                    for c in range(cols):
                        s[c] += src[c]
