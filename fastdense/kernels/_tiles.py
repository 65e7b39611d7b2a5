"""Compile-time tile constants and micro-kernel selection per dtype and vector instruction set.

The register tiles are sized for the vector registers of the CPU the kernels are compiled for
(what Numba targets: the host, or ``NUMBA_CPU_FEATURES``): with AVX-512 (32 registers of 512
bits) the 8 x 32 float32 and 8 x 16 float64 tiles; with AVX2 only (16 registers of 256 bits)
6 x 16 and 6 x 8, since the AVX-512 tiles would need every register for their accumulators
and spill (on a Zen 3 core, one thread: 33 against 102 GFLOP/s in float32, 16.5 against 50.5
in float64).  The tile shape does not change any result: each output element is summed over
the reduction in the same order whatever the tile (only ``KC``, the same for both sets, would).

``FASTDENSE_TILES=avx512`` or ``avx2`` overrides the choice (for tests and diagnostics: an
AVX-512 tile runs on an AVX2 CPU, only slowly, and an AVX2 tile on an AVX-512 CPU).  The chosen
set is part of every kernel's cache stamp (:mod:`fastdense.kernels._codegen`), so kernels
compiled for one set are never loaded for the other.
"""

from numba.extending import overload

from fastdense.kernels._isa import TILES, VENDOR
from fastdense.kernels._microkernels import (
    DOT_UNITS,
    HALF_MR_AVX2,
    MR_F32,
    MR_F32_AVX2,
    MR_F64,
    MR_F64_AVX2,
    NARROW_ROWS_MR,
    NARROW_ROWS_NR_F32,
    NARROW_ROWS_NR_F64,
    NR_F32,
    NR_F32_AVX2,
    NR_F64,
    NR_F64_AVX2,
    STRIP_F32,
    STRIP_F64,
    UNIT_STRIP_F32,
    UNIT_STRIP_F64,
    dots_4,
    dots_4x4,
    rows_8x4,
    rows_8x8,
    strip_32,
    strip_64,
    strip_128,
    ukernel_4x8,
    ukernel_4x16,
    ukernel_6x8,
    ukernel_6x16,
    ukernel_8x16,
    ukernel_8x32,
    unit_strip3_32,
    unit_strip3_64,
    unit_strip_32,
    unit_strip_64,
)

# Cache blocking, ``(MR, NR, KC, MC, NC)`` by dtype and tile set.  KC * NR (B micro-panel) stays
# in L1 next to the A stream, MC * KC (A block) in L2 (0.5-2 MiB on the targets), NC * KC (B
# block) in L3.  KC is the same for both tile sets, so both give the same bits; MC is a whole
# number of MR-row panels.  On the AVX2 machine (Zen 3, 32 KiB L1, 512 KiB L2), Dense forward:
# KC = 256 was no faster than 512 (one thread, six shapes from 32 x 784->512 to
# 1024 x 1024->1024 in both dtypes: 0-35% slower; two threads, four shapes, two alternations:
# within the noise or slower), and MC doubled (144 and 72) within the noise.
_BLOCKINGS = {
    ("float32", "avx512"): (MR_F32, NR_F32, 512, 64, 2048),
    ("float64", "avx512"): (MR_F64, NR_F64, 512, 32, 1024),
    ("float32", "avx2"): (MR_F32_AVX2, NR_F32_AVX2, 512, 72, 2048),
    ("float64", "avx2"): (MR_F64_AVX2, NR_F64_AVX2, 512, 36, 1024),
}
if VENDOR == "intel":
    # On an Intel core (Emerald Rapids: 2 MiB L2, an L3 slower to reach than Zen 4's) the
    # float64 B block, re-read from the L3 by each row block, is read half as often with row
    # blocks of 64 rows.  Both versions and NumPy in one process, 30 ms blocks in turn, two
    # threads, best, MC 32 / 64 (NumPy): ``a @ b`` 256 x 4096 x 1024 21.7 / 19.1 ms (17.3),
    # its ``dz @ w.T`` 21.1 / 18.3 (16.0), 1024^3 19.5 / 17.7 (16.0), 256 x 784 x 512 1.95 /
    # 1.70 (1.69); one thread 1024^3 38.2 / 34.0 (31.6); Dense forward 256 x 4096->1024 30.0 /
    # 25.9 (22.6), 128 x 4096->1024 14.5 / 13.4 (11.0), 1024 x 1024->1024 21.0 / 19.2 (19.4);
    # training step 256 x 4096->1024 62.1 / 58.1 (80.8), 1024 x 1024->1024 68.3 / 66.0 (71.4),
    # 256 x 784->512 7.18 / 6.67 (9.25); 128 x 784->128 and 64 x 256->256 at parity.
    _BLOCKINGS["float64", "avx512"] = (MR_F64, NR_F64, 512, 64, 1024)
_UKERNELS = {
    ("float32", "avx512"): ukernel_8x32,
    ("float64", "avx512"): ukernel_8x16,
    ("float32", "avx2"): ukernel_6x16,
    ("float64", "avx2"): ukernel_6x8,
}

# Tiles of fewer rows for the end of a row block (see ``_phase`` in gemm.py): the AVX2 set's MR
# of 6 leaves 2 or 4 rows of the common batch sizes, the AVX-512 set's 8 divides them, so it has
# none (its own kernel stands in for the call that is compiled but never taken).
_HALF_UKERNELS = {
    ("float32", "avx2"): ukernel_4x16,
    ("float64", "avx2"): ukernel_4x8,
}
#: Rows of the tile set's short tiles (0: none).
HALF_MR = HALF_MR_AVX2 if TILES == "avx2" else 0

#: ``(MR, NR, KC, MC, NC)`` by dtype name, for Python callers sizing workspaces.
BLOCKING = {dt: _BLOCKINGS[dt, TILES] for dt in ("float32", "float64")}
KC_F32, MC_F32, NC_F32 = BLOCKING["float32"][2:]
KC_F64, MC_F64, NC_F64 = BLOCKING["float64"][2:]


def _dtype_name(a) -> str:
    return "float32" if a.dtype.bitwidth == 32 else "float64"


# The overloads below hand Numba closures over the chosen kernel or constants, never globals:
# Numba keys a cached overload by its code and the contents of its closure, so what was
# compiled for one tile set is never loaded for the other.


def _ukernel(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu):
    """Dispatch to the dtype's micro-kernel for a column of tiles (resolved at compile time)."""


@overload(_ukernel, jit_options={"cache": True})
def _ukernel_ol(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu):
    fn = _UKERNELS[_dtype_name(a3), TILES]

    def impl(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu):
        return fn(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu)

    return impl


def _half_ukernel(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu):
    """Dispatch to the dtype's HALF_MR-row micro-kernel, one tile a call (the full one where
    there is none)."""


@overload(_half_ukernel, jit_options={"cache": True})
def _half_ukernel_ol(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu):
    key = (_dtype_name(a3), TILES)
    fn = _HALF_UKERNELS.get(key, _UKERNELS[key])

    def impl(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu):
        return fn(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu)

    return impl


def _blocking(a):
    """``(MR, NR, KC, MC, NC)`` for ``a``'s dtype (compile-time constants)."""


@overload(_blocking, jit_options={"cache": True})
def _blocking_ol(a):
    blocking = BLOCKING[_dtype_name(a)]
    return lambda a: blocking


# Products with few output columns (``narrow.narrow_product``: a layer of at most 16 float32 or
# 8 float64 units) use one tile whatever the set: the AVX2 set's 6 x 16 float32 and 6 x 8
# float64 tiles, whose rows are one 512-bit vector (or two of 256 bits), so that a layer of
# 10 units computes 16 columns, not 32.  Same KC, so the same bits.
_NARROW_UKERNELS = {"float32": ukernel_6x16, "float64": ukernel_6x8}
#: ``(MR, NR)`` of the tiles of products with few columns, by dtype name.
NARROW_TILES = {"float32": (MR_F32_AVX2, NR_F32_AVX2), "float64": (MR_F64_AVX2, NR_F64_AVX2)}


# Products of at most 8 float32 or 4 float64 columns (half those tiles) use tiles of eight
# 256-bit rows, one vector of sums each, and rows of A passed apart (``rows_8x8``, ``rows_8x4``:
# see ``tools/gen_microkernels.py``), at 0.60 cycles per row and step against 1.04.
_NARROW_ROW_KERNELS = {"float32": rows_8x8, "float64": rows_8x4}
#: ``(MR, NR)`` of those tiles, by dtype name.
NARROW_HALF_TILES = {"float32": (NARROW_ROWS_MR, NARROW_ROWS_NR_F32),
                     "float64": (NARROW_ROWS_MR, NARROW_ROWS_NR_F64)}


def _narrow_rows_ukernel(kc, r0, r1, r2, r3, r4, r5, r6, r7, bp, bo, bps, tile):
    """Dispatch to the dtype's tile of 256-bit rows (resolved at compile time)."""


@overload(_narrow_rows_ukernel, jit_options={"cache": True})
def _narrow_rows_ukernel_ol(kc, r0, r1, r2, r3, r4, r5, r6, r7, bp, bo, bps, tile):
    fn = _NARROW_ROW_KERNELS[_dtype_name(tile)]

    def impl(kc, r0, r1, r2, r3, r4, r5, r6, r7, bp, bo, bps, tile):
        return fn(kc, r0, r1, r2, r3, r4, r5, r6, r7, bp, bo, bps, tile)

    return impl


def _narrow_half_nr(a):
    """NR of NARROW_HALF_TILES for ``a``'s dtype (a compile-time constant)."""


@overload(_narrow_half_nr, jit_options={"cache": True})
def _narrow_half_nr_ol(a):
    nr = NARROW_HALF_TILES[_dtype_name(a)][1]
    return lambda a: nr


def _narrow_ukernel(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu):
    """Dispatch to the dtype's micro-kernel for products with few columns (resolved at compile
    time)."""


@overload(_narrow_ukernel, jit_options={"cache": True})
def _narrow_ukernel_ol(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu):
    fn = _NARROW_UKERNELS[_dtype_name(a3)]

    def impl(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu):
        return fn(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu)

    return impl


def _narrow_blocking(a):
    """``(MR, NR, KC)`` of products with few columns for ``a``'s dtype (compile-time
    constants)."""


@overload(_narrow_blocking, jit_options={"cache": True})
def _narrow_blocking_ol(a):
    name = _dtype_name(a)
    blocking = NARROW_TILES[name] + (BLOCKING[name][2],)
    return lambda a: blocking


def _strip(x, b, j0, out):
    """Dispatch to the dtype's vector-matrix strip (resolved at compile time)."""


@overload(_strip, jit_options={"cache": True})
def _strip_ol(x, b, j0, out):
    fn = strip_128 if _dtype_name(out) == "float32" else strip_64

    def impl(x, b, j0, out):
        return fn(x, b, j0, out)

    return impl


def _half_strip(x, b, j0, out):
    """Dispatch to the dtype's strip of half the width (resolved at compile time)."""


@overload(_half_strip, jit_options={"cache": True})
def _half_strip_ol(x, b, j0, out):
    fn = strip_64 if _dtype_name(out) == "float32" else strip_32

    def impl(x, b, j0, out):
        return fn(x, b, j0, out)

    return impl


# The widest ``b`` (columns) whose vector-matrix product goes through strips rather than
# ``gemm._vecmat``'s streaming of whole rows.  Measured on the AVX2 machine (Zen 3), one thread,
# ``b`` in the caches: float32 strips of 128 columns (16 ymm of sums) beat ``_vecmat`` up to
# 256 columns, and the 64-column strip beats it 2.8x at 64x64; in float64, 64-column strips
# beat it at 64 columns (784x64: 4.7 against 7.6 us) but not at 128 (64x128: 0.97 against
# 0.85 us; 256x128: 4.1 against 3.5 us).  On AVX-512, two strips, as measured on the Xeon.
_STRIP_COLUMNS = {
    ("float32", "avx512"): 2 * STRIP_F32,
    ("float64", "avx512"): 2 * STRIP_F64,
    ("float32", "avx2"): 2 * STRIP_F32,
    ("float64", "avx2"): STRIP_F64,
}


def _strip_width(a):
    """Columns of the dtype's vector-matrix strip (a compile-time constant)."""


@overload(_strip_width, jit_options={"cache": True})
def _strip_width_ol(a):
    width = STRIP_F32 if _dtype_name(a) == "float32" else STRIP_F64
    return lambda a: width


def _strip_columns(a):
    """The most columns of ``b`` taken by strips in a vector-matrix product of the dtype (a
    compile-time constant)."""


@overload(_strip_columns, jit_options={"cache": True})
def _strip_columns_ol(a):
    columns = _STRIP_COLUMNS[_dtype_name(a), TILES]
    return lambda a: columns


# Layers of a few float32 units forward by dot products (``dense.forward_dots``) DOT_UNITS
# units at a time with the AVX-512 tiles (``dots_4x4``: 16 zmm of sums); with AVX2's 16
# registers, or in float64, those sums would not fit, and the group is summed a unit at a time
# (``dots_4``, the same bits).
def _unit_dots(w, x, p, out, m, lanes):
    """Dispatch to the dot products of DOT_UNITS units with DOT_ROWS rows at once (resolved at
    compile time)."""


@overload(_unit_dots, jit_options={"cache": True})
def _unit_dots_ol(w, x, p, out, m, lanes):
    if (_dtype_name(x), TILES) == ("float32", "avx512"):
        def impl(w, x, p, out, m, lanes):
            dots_4x4(w, x, p, out, m, lanes)
    else:
        units = DOT_UNITS

        def impl(w, x, p, out, m, lanes):
            k = x.shape[1]
            for u in range(units):
                dots_4(w[u * k:(u + 1) * k], x, p, out[u * m:(u + 1) * m], lanes)
    return impl


#: The most units of a layer that forwards by dot products, by dtype name.
DOT_UNITS_MAX = {"float32": 4 if TILES == "avx512" else 2, "float64": 2}


# A few-unit layer's weight gradient by strips (``dense._weight_grad_span``) takes three or
# four units at a time with the AVX-512 tiles: 64 float32 or 32 float64 columns for each unit,
# 12 or 16 zmm of sums.  AVX2's 16 registers would not hold them, and the units run a strip at
# a time (``gemm.strips_between``, the same bits).
def _unit_strip(d, b, j0, out):
    """Dispatch to the strips of :func:`_unit_strip_width` columns for the three or four rows
    of ``d`` at once (resolved at compile time)."""


@overload(_unit_strip, jit_options={"cache": True})
def _unit_strip_ol(d, b, j0, out):
    name = _dtype_name(out)
    if TILES == "avx512":
        four = unit_strip_64 if name == "float32" else unit_strip_32
        three = unit_strip3_64 if name == "float32" else unit_strip3_32

        def impl(d, b, j0, out):
            if d.shape[0] == 4:
                four(d, b, j0, out)
            else:
                three(d, b, j0, out)
    else:
        from fastdense.kernels.gemm import strips_between

        width = _UNIT_STRIP_WIDTH[name]

        def impl(d, b, j0, out):
            for u in range(d.shape[0]):
                strips_between(d[u], b, j0, j0 + width, out[u])
    return impl


_UNIT_STRIP_WIDTH = {"float32": UNIT_STRIP_F32, "float64": UNIT_STRIP_F64}


def _unit_strip_width(a):
    """Columns of :func:`_unit_strip` for ``a``'s dtype (a compile-time constant)."""


@overload(_unit_strip_width, jit_options={"cache": True})
def _unit_strip_width_ol(a):
    width = _UNIT_STRIP_WIDTH[_dtype_name(a)]
    return lambda a: width


#: The most units of a layer whose weight gradient runs by strips, by dtype name: groups of
#: DOT_UNITS with the AVX-512 tiles.
STRIPS_UNITS_MAX = {"float32": 4 if TILES == "avx512" else 2,
                    "float64": 4 if TILES == "avx512" else 2}
