"""The packed GEMM against a float64 NumPy reference, over every edge-tile case."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdense import activations
from fastdense.kernels import activation as act
from fastdense.kernels._tiles import BLOCKING, KC_F32, MC_F32, MC_F64, NC_F32
from fastdense.kernels.gemm import (
    ALIASED_A_BYTES,
    DIRECT_B_BYTES,
    DIRECT_F64_B_BYTES,
    DIRECT_ROWS,
    DIRECT_SKINNY_B_BYTES,
    DIRECT_SKINNY_ROW_BYTES,
    DIRECT_SKINNY_ROWS,
    EP_BIAS_ACT,
    EP_STORE,
    OWN_B_BYTES,
    PAGE_BYTES,
    PIPELINE_BLOCKS,
    _row_blocks,
    _unaliased,
    _vecmat,
    _ws_len,
    double_buffers_b,
    gemm,
    gemm_rows,
    is_small,
    product,
    rows_ws_len,
    vector_block_rows,
    workspace_size,
)
from fastdense.kernels.memory import CACHE_LINE
from tests.helpers import placed, run_beside_a_guard_page
from tests.kernels.conftest import product_tolerance

# The tiles of this machine's tile set (``_tiles``); test_tiles.py runs the other set.
(MR_F32, NR_F32), (MR_F64, NR_F64) = BLOCKING["float32"][:2], BLOCKING["float64"][:2]
MR = MR_F32
assert MR == MR_F64
KC = KC_F32
# M, N, K around MR, both NRs and KC, primes, and 1; every shape here is large enough to take
# the packed path except where noted, so edge panels, edge tiles and partial KC blocks all run.
SHAPES = [
    (1, 1, 1),  # direct path
    (MR - 1, NR_F32 - 1, KC - 1),
    (MR + 1, NR_F32 + 1, KC + 1),
    (MR, NR_F32, KC),
    (MR + 1, NR_F64 - 1, 2 * KC + 3),
    (3, NR_F64 + 1, 701),
    (67, 97, 13),
    (131, 61, 257),
    (37, 5, 1),  # direct path
    (2, 300, 300),  # direct path (m <= 2)
    (200, 3, 2),
    # (The paths named below for B beyond 1 MiB are those of cores other than Intel's; on
    # Intel cores, B is read in place for at most MC rows up to DIRECT_B_BYTES and 16 beyond
    # (``gemm.INTEL_DIRECT_B_BYTES``, ``gemm.INTEL_SKINNY_B_BYTES``), and packed by the tasks
    # or by rows otherwise, as for the shapes after these.)
    # A row-major B between DIRECT_B_BYTES and DIRECT_SKINNY_B_BYTES, read in place for up to
    # DIRECT_SKINNY_ROWS rows with the AVX-512 tiles (packed with the AVX2 ones, which read in
    # place only float32 B of up to DIRECT_B_BYTES, as in the shapes above): float32 (2.4 MB)
    # and float64 (4.8 MB; 2.9 MB), partial last panels, row tiles and KC blocks.
    (20, 601, 1000),
    (31, 600, 601),
    # ... and up to DIRECT_SKINNY_B_BYTES (float32, 9 MB), or beyond on several threads with
    # rows of at most DIRECT_SKINNY_ROW_BYTES (float64, 18 MB, rows of 12 KB; packed by rows
    # on one thread).
    (24, 1500, 1500),
    # ... but longer rows are packed (float64, 18.5 MB, rows of 16.8 KB: by rows, double-buffered
    # on two threads; float32, 9.2 MB, in place).
    (24, 2100, 1100),
    # ... and with the AVX-512 tiles up to MC rows, one row block: float32 (4.4 MB) in place for
    # 60 rows; float64 (8.8 MB, two row blocks, one with Intel's MC) packed by the tasks
    # (``own_b``).
    (60, 1100, 1000),
    # Fewer NR-column panels than threads, up to MC rows (B read in place): a row block per
    # thread (float32: one panel each; float64: 10 columns one panel, 20 and 26 two, as before).
    (32, 20, 784),
    (32, 10, 784),
    (24, 26, 600),
    # A row-major B over DIRECT_B_BYTES with few rows: each task packs its own B panels
    # (``own_b``); two row blocks, edge panels, two KC blocks, and two NC blocks in float64.
    (70, 1030, 530),
    # ... and over OWN_B_BYTES in both dtypes: the threads pack the shared B block by rows;
    # partial row tile, partial last panel, partial KC block.
    (37, 1000, 4300),
    # ... and so, with up to PIPELINE_BLOCKS row blocks on two threads, the next B block is packed
    # while the current one is used: several NC blocks (the pipeline crosses from one to the
    # next), a partial last panel and a partial last KC block in both dtypes.
    (37, 2100, 2100),
    # ... but not at exactly OWN_B_BYTES (float32 4096->1024, 16 MiB): the tasks pack their own
    # column chunks of 8 panels there (``own_b``); in float64 (32 MiB) double-buffered for 37
    # rows, single-buffered row packing for 140 (three or five row blocks).
    (37, 1024, 4096),
    (140, 1024, 4096),
    # Rows of a transposed A (op(A) columns) of 32 KiB in float64: packed, not read in place
    # (16 KiB in float32: in place with the AVX-512 tiles, packed with the AVX2 ones); a
    # partial last NR panel and two KC blocks, the second partial.
    (4096, 33, KC + 88),
    # Rows of 4 KiB in float32 (packed with the AVX2 tiles, in place with the AVX-512 ones) and
    # 8 KiB in float64.
    (1024, 45, 70),
    # Rows 6a + 2 and 6a + 4, whose last 8 or 4 rows the AVX2 tiles compute in 4-row tiles when
    # A is read in place (NN), and with a partial last panel and KC block; and 2 and 4 rows
    # alone (one 4-row tile, zero-padded for 2).
    (32, NR_F32 + 3, KC + 5),
    (28, 2 * NR_F64 + 1, 300),
    (4, 40, 200),
    # More than DIRECT_ROWS rows over more than PACKED_A_STEPS steps times a narrow B (at most
    # NARROW_B_PANELS panels: a transposed A then read in place with the AVX2 tiles): partial
    # panels, row tiles and KC blocks; 20 columns are 2 float32 panels, 3 float64 ones (packed).
    (700, 10, KC + 18),
    (300, 20, 400),
]
assert ALIASED_A_BYTES in (4096, 32 << 10)
assert DIRECT_B_BYTES < 601 * 1000 * 4 < 601 * 1000 * 8 <= DIRECT_SKINNY_B_BYTES
assert DIRECT_B_BYTES < 601 * 600 * 8 <= DIRECT_SKINNY_B_BYTES and 31 <= DIRECT_SKINNY_ROWS
assert 1500 * 1500 * 4 <= DIRECT_SKINNY_B_BYTES < 1500 * 1500 * 8
assert 1500 * 8 <= DIRECT_SKINNY_ROW_BYTES < 2100 * 8 and 2100 * 1100 * 8 > DIRECT_SKINNY_B_BYTES
assert 2100 * 2100 * 4 > DIRECT_SKINNY_B_BYTES and 2100 * 4 <= DIRECT_SKINNY_ROW_BYTES
assert DIRECT_B_BYTES < 1100 * 1000 * 4 and 60 <= MC_F32
assert 1000 * 4300 * 4 > OWN_B_BYTES
assert 2100 * 2100 * 4 > OWN_B_BYTES and 2100 > NC_F32 and 37 <= PIPELINE_BLOCKS * MC_F64
assert 4096 * 1024 * 4 == OWN_B_BYTES
assert PIPELINE_BLOCKS * MC_F64 < 140 <= DIRECT_ROWS


def test_double_buffering_starts_over_own_b_bytes_and_stops_after_two_row_blocks():
    for mc in (MC_F32, MC_F64):
        rows = PIPELINE_BLOCKS * mc
        assert double_buffers_b(rows, 1024, 4097, 4, mc)
        assert not double_buffers_b(rows, 1024, 4096, 4, mc)
        assert not double_buffers_b(rows + 1, 1024, 4097, 4, mc)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_blocks_are_whole_panels_and_shared_evenly(dtype):
    MR, NR, _, MC, _ = BLOCKING[dtype]
    for m in (1, MR - 1, MR + 1, MC, MC + 1, 2 * MC + 1, 256, 1000, 1024, 2048, 4099):
        pm = -(-m // MR)
        for nthreads in (1, 2, 3, 4):
            for own_b, shared_a, n in ((False, False, 4 * NR), (True, False, 4 * NR),
                                       (False, False, NR), (False, True, NR),
                                       (True, False, NR)):
                nib = _row_blocks(m, n, MR, NR, MC, nthreads, own_b, shared_a)
                edges = [MR * ((pm * ib) // nib) for ib in range(nib)] + [m]
                sizes = np.diff(edges)
                assert edges[0] == 0 and (sizes > 0).all() and (sizes <= MC).all()
                assert all(e % MR == 0 for e in edges[:-1])
                # Blocks differ by at most a panel, and the last by its partial panel too.
                assert sizes.max() - sizes.min() < 2 * MR
                if nthreads > 1 and not own_b and nib > 1:
                    assert nib % nthreads == 0 or nib == pm
                if nthreads == 1 or own_b:
                    assert nib == -(-m // MC)
                # Up to MC rows over fewer panels than threads, a block per thread (at most a
                # panel each), unless the single A block is shared.
                few = m <= MC and nthreads > 1 and not own_b and n <= NR * (nthreads - 1)
                if few and not shared_a:
                    assert nib == min(pm, nthreads)
                elif m <= MC:
                    assert nib == 1


def _operands(rng, m, n, k, ta, tb, dtype):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["NN", "TN", "NT", "TT"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_matches_reference(shape, trans, dtype):
    m, n, k = shape
    ta, tb = trans
    rng = np.random.default_rng(m * 10007 + n * 101 + k)
    a, b = _operands(rng, m, n, k, ta, tb, dtype)
    out = np.full((m, n), np.nan, dtype=dtype)
    gemm(a, b, out, ta, tb)
    opa = a.T if ta else a
    opb = b.T if tb else b
    ref = opa.astype(np.float64) @ opb.astype(np.float64)
    tol = product_tolerance(opa, opb, dtype)
    assert out.dtype == dtype
    assert np.all(np.abs(out - ref) <= tol)


def test_shapes_cover_both_paths():
    assert is_small(1, 1, 1) and not is_small(MR + 1, NR_F32 + 1, KC + 1)


@pytest.mark.parametrize("shape", [(0, 5, 3), (5, 0, 3), (5, 3, 0), (0, 0, 0), (40, 50, 0)])
def test_empty_dims(shape, dtype):
    m, n, k = shape
    a = np.ones((m, k), dtype)
    b = np.ones((k, n), dtype)
    out = np.full((m, n), np.nan, dtype=dtype)
    gemm(a, b, out, False, False)
    assert np.array_equal(out, np.zeros((m, n), dtype))


def test_nan_and_inf_propagate(dtype):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((70, 300)).astype(dtype)
    b = rng.standard_normal((300, 90)).astype(dtype)
    a[5, 7] = np.nan
    b[11, 3] = np.inf
    out = np.empty((70, 90), dtype)
    gemm(a, b, out, False, False)
    assert np.isnan(out[5]).all()
    col = out[:, 3]
    assert not np.isfinite(col).any()
    mask = np.ones(out.shape, bool)
    mask[5] = False
    mask[:, 3] = False
    assert np.isfinite(out[mask]).all()


@pytest.mark.parametrize("shape", [(300, 200, 600), (16, 2000, 300), (1000, 40, 100),
                                   (70, 1030, 530), (37, 1000, 4300), (37, 2100, 2100),
                                   (32, 1024, 1024), (130, 300, 200), (24, 160, 700),
                                   (4096, 33, 600),
                                   (37, 1024, 4096), (100, 1024, 4096),
                                   # B read in place on several threads, packed by rows on one
                                   (24, 1500, 1500), (20, 2100, 2100), (60, 2100, 2100),
                                   # fewer column panels than threads: a row block each
                                   (32, 20, 784), (32, 10, 784), (64, 24, 784), (16, 9, 2100)])
@pytest.mark.parametrize("trans", [(False, False), (True, True)], ids=["NN", "TT"])
def test_bitwise_identical_for_any_thread_count(shape, trans, dtype):
    m, n, k = shape
    ta, tb = trans
    rng = np.random.default_rng(7)
    a, b = _operands(rng, m, n, k, ta, tb, dtype)
    results = []
    before = numba.get_num_threads()
    try:
        for nt in (1, numba.config.NUMBA_NUM_THREADS, 1):
            numba.set_num_threads(nt)
            out = np.empty((m, n), dtype)
            gemm(a, b, out, ta, tb)
            results.append(out)
    finally:
        numba.set_num_threads(before)
    assert all(np.array_equal(results[0], r) for r in results[1:])


def _assert_same_bits_whereverplaced(a, b, place_out):
    """``a @ b`` by gemm with B on a cache line and 8, 16 and 48 bytes past one (and the output
    as far past one with ``place_out``, else where NumPy puts it), on one thread and on all:
    the same bits every time, within the reference's bound."""
    m, n = a.shape[0], b.shape[1]
    results = []
    before = numba.get_num_threads()
    try:
        for nt in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(nt)
            for offset in (0, 8, 16, 48):
                out = np.full((m, n), np.nan, a.dtype)
                if place_out:
                    out = placed(out, offset)
                gemm(a, placed(b, offset), out, False, False)
                results.append(out)
    finally:
        numba.set_num_threads(before)
    assert all(np.array_equal(results[0], r) for r in results[1:])
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.all(np.abs(results[0] - ref) <= product_tolerance(a, b, a.dtype))


# Few rows times a B small enough to be read in place (float64: only when its panels start on
# cache lines, DIRECT_F64_B_BYTES): whole panels, several KC blocks (tasks spanning them), and
# a row stride that is not a whole number of lines (float64 B then packed wherever it lies).
@pytest.mark.parametrize("shape", [(5, 64, 30), (32, 256, 256), (24, 128, 784), (16, 200, 600),
                                   (13, 8, 513), (32, 40, 1100), (7, 52, 300)],
                         ids=lambda s: "x".join(map(str, s)))
def test_same_bits_wherever_b_lies(shape, dtype):
    """B on a cache line (read in place) or 8 to 48 bytes past one (float64: packed) gives the
    same bits, on one thread and on all, and they match the reference."""
    m, n, k = shape
    rng = np.random.default_rng(8)
    a, b = _operands(rng, m, n, k, False, False, dtype)
    assert b.nbytes <= DIRECT_F64_B_BYTES and m <= DIRECT_SKINNY_ROWS
    _assert_same_bits_whereverplaced(a, b, place_out=False)


# A B of fewer columns than a panel (a layer of 17 to 31 float32 or 9 to 15 float64 units with
# the AVX-512 tiles; shapes as (m, n, k), "-c" for NR - c columns) is read in place, NR elements
# from the start of each row, its end from a copy (``gemm._narrow_b_tail``): one column (the
# copy then starts a block early, the last NR - 1 rows passing B's end), a block of one step
# after KC, several blocks, one block, rows of one tile and of more than DIRECT_ROWS.
@pytest.mark.parametrize("shape", [(5, 1, KC + 1), (300, 1, 40), (13, 3, 2 * KC + 5),
                                   (9, "-1", 700), (260, "-1", KC), (300, 5, 7), (40, "-3", 33)],
                         ids=lambda s: "x".join(map(str, s)))
def test_a_b_of_fewer_columns_than_a_panel_gives_the_bits_of_its_transpose(shape, dtype):
    """Such a B read in place gives the bits of the same product with B transposed (packed),
    on one thread and on all, for the plain store and the forward's epilogue (bias and ReLU
    stored with the partial tiles, or the identity then tanh applied to them: the bits of
    ``z + bias`` and of the activation of ``z``)."""
    m, n, k = shape
    nr = BLOCKING[np.dtype(dtype).name][1]
    n = nr + int(n) if isinstance(n, str) else n
    rng = np.random.default_rng(m + n + k)
    a, b = _operands(rng, m, n, k, False, False, dtype)
    bias = rng.standard_normal(n).astype(dtype)
    activations.get("tanh").prepare(dtype)
    ws = np.empty(workspace_size(m, n, k, dtype), dtype)
    e = np.empty(0, dtype)
    before = numba.get_num_threads()
    try:
        for nt in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(nt)
            want = np.full((m, n), np.nan, dtype)
            product(a, np.ascontiguousarray(b.T), want, False, True, EP_STORE, e, act.LINEAR,
                    want, want, 0.0, 0.0, 0.0, ws)
            got = np.full((m, n), np.nan, dtype)
            product(a, b, got, False, False, EP_STORE, e, act.LINEAR, got, got, 0.0, 0.0, 0.0,
                    ws)
            assert np.array_equal(got, want)
            z_want = want + bias
            for code in (act.RELU, act.TANH):
                y_want = np.empty_like(z_want)
                act.activate(code, z_want, y_want)
                z, y = np.full((m, n), np.nan, dtype), np.full((m, n), np.nan, dtype)
                product(a, b, z, False, False, EP_BIAS_ACT, bias, code, y, z, 0.0, 0.0, 0.0, ws)
                assert np.array_equal(z, z_want)
                assert np.array_equal(y, y_want)
    finally:
        numba.set_num_threads(before)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.all(np.abs(got - ref) <= product_tolerance(a, b, dtype))


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_a_b_of_fewer_columns_than_a_panel_is_never_read_past_its_end(dtype_name):
    """Read in place, such a B's rows are read past their end (into the next rows) but never
    past the end of B: here B ends where an unreadable page begins, and a read there would
    kill the process."""
    run_beside_a_guard_page(f"""
        from fastdense.kernels._tiles import BLOCKING
        from fastdense.kernels.gemm import gemm
        dt = np.dtype("{dtype_name}")
        nr, kc = BLOCKING[dt.name][1], BLOCKING[dt.name][2]
        for m, k, n in ((40, 300, 1), (40, kc + 1, 3), (300, 100, nr - 1), (9, 2 * kc + 1, 5),
                        (64, 33, nr - 1)):
            b = guarded((k, n), dt)
            b[...] = 1
            out = np.empty((m, n), dt)
            gemm(np.ones((m, k), dt), b, out, False, False)
            assert np.all(out == k), (m, k, n)
    """)


# Rows of whole cache lines (n a multiple of 16), so that a B read in place at the output's
# place within a line is read on lines, its panels shifted (see _b_panels): every whole panel
# shifted, one gathered edge panel (head and tail columns), n below NR plus the shift, several
# KC blocks, partial and short row panels, and more than NC columns (two column chunks, each
# with its edge panel).
@pytest.mark.parametrize("shape", [(32, 128, 784), (7, 16, 600), (20, 176, 64), (8, 2064, 60),
                                   (5, 48, 40)],
                         ids=lambda s: "x".join(map(str, s)))
def test_same_bits_with_b_and_out_in_one_phase(shape, dtype):
    """B and the output at the same place within their cache lines (B's panels then read from
    a shifted column) give the bits of both on lines, on one thread and on all."""
    m, n, k = shape
    rng = np.random.default_rng(9)
    a, b = _operands(rng, m, n, k, False, False, dtype)
    assert m <= DIRECT_SKINNY_ROWS and (n * b.itemsize) % CACHE_LINE == 0
    _assert_same_bits_whereverplaced(a, b, place_out=True)


@pytest.mark.parametrize("shape", [(300, 200, 600), (16, 2000, 300), (2, 300, 300),
                                   (37, 2100, 2100)])
def test_workspace_argument(shape, dtype):
    """A caller's workspace gives the same bits as the kernel's own; a short one still works."""
    from fastdense.kernels.gemm import workspace_size

    m, n, k = shape
    rng = np.random.default_rng(3)
    a, b = _operands(rng, m, n, k, False, False, dtype)
    ref = np.empty((m, n), dtype)
    gemm(a, b, ref, False, False)
    # A workspace with room for one B block only: a streamed B is then not double-buffered.
    one_block = _ws_len(m, n, k, *BLOCKING[np.dtype(dtype).name],
                        numba.config.NUMBA_NUM_THREADS, False)
    for length in (workspace_size(m, n, k, dtype), one_block, 0, 7):
        ws = np.full(length, np.nan, dtype)
        out = np.empty((m, n), dtype)
        gemm(a, b, out, False, False, ws)
        assert np.array_equal(out, ref)


# A ``b`` over OWN_B_BYTES in both dtypes, read eight rows at a time; a partial KC block.
DEEP_ROWS_SHAPE = (2, 4100, 1030)
assert 4100 * 1030 * 4 > OWN_B_BYTES


def _rows_and_general(a, b, dtype):
    """``gemm_rows(a, b)`` on 1 and on all threads (asserted bitwise equal), and ``gemm``'s
    result for the same operands."""
    m, k = a.shape
    n = b.shape[1]
    ws = np.empty(workspace_size(m, n, k, dtype), dtype)
    before = numba.get_num_threads()
    outs = []
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            out = np.full((m, n), np.nan, dtype)
            gemm_rows(a, b, out, ws)
            outs.append(out)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(outs[0], outs[1])
    ref = np.empty((m, n), dtype)
    gemm(a, b, ref, False, False)
    return outs[0], ref


# Row blocks of b (vector_block_rows): none just under VECTOR_SPLIT_MIN or with k < 16; two
# of 8 rows at k = 16; a short last block; KC-row blocks, a partial last one.  Partial sums
# wider than the rest of the workspace (2 x 16 x 20000).  Strips: half-width ones after whole
# ones (float32 255, 200 and 64 columns; float64 40 and 64), strips then _vecmat (float32 255,
# float64 40).
@pytest.mark.parametrize("shape", [(1, 9, 5), (2, 300, 40), (1, 256, 255), (2, 15, 5000),
                                   (2, 16, 4096), (1, 20, 4000), (1, 256, 256), (1, 700, 600),
                                   (2, 130, 1000), (1, 1500, 700), (2, 2100, 40),
                                   (2, 16, 20000), (1, 50, 64), (2, 70, 200),
                                   DEEP_ROWS_SHAPE],
                         ids=lambda s: "x".join(map(str, s)))
def test_gemm_rows(shape, dtype):
    """The one-or-two-row entry point gives the bits of the general product for a small
    ``b``; a larger one is summed in row blocks instead (``vector_block_rows``), checked
    against the reference.  Same bits on any number of threads either way."""
    m, k, n = shape
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    out, ref = _rows_and_general(a, b, dtype)
    if vector_block_rows(k, n, dtype) < k:
        exact = a.astype(np.float64) @ b.astype(np.float64)
        assert np.all(np.abs(out - exact) <= product_tolerance(a, b, dtype))
        assert not np.array_equal(out, ref)  # the blocked order was taken
    else:
        assert np.array_equal(out, ref)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 2), st.integers(1, 900), st.integers(1, 400),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1))
def test_property_gemm_rows(m, k, n, dtype, seed):
    """Over shapes on both sides of the row-block split: within the reduction's error bound of
    the exact product, the same bits on 1 and on all threads, and the general product's bits
    where the weights are not split."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    out, ref = _rows_and_general(a, b, dtype)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert np.all(np.abs(out - exact) <= product_tolerance(a, b, dtype))
    if vector_block_rows(k, n, dtype) == k:
        assert np.array_equal(out, ref)


@pytest.mark.parametrize("shape", [(1, 40, 64), (2, 300, 600)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gemm_rows_refuses_a_short_workspace(shape, dtype):
    """Compiled without Numba's runtime, the row entry point cannot allocate: a workspace
    shorter than the sums raises ``ValueError`` before anything is written."""
    m, k, n = shape
    a, b = np.ones((m, k), dtype), np.ones((k, n), dtype)
    out = np.full((m, n), 7, dtype)
    need = rows_ws_len(m, n, k, BLOCKING[np.dtype(dtype).name][2], np.dtype(dtype).itemsize)
    assert workspace_size(m, n, k, dtype) >= need
    short = need - PAGE_BYTES // np.dtype(dtype).itemsize - 1
    with pytest.raises(ValueError, match="workspace is too short"):
        gemm_rows(a, b, out, np.empty(short, dtype))
    assert np.all(out == 7)
    gemm_rows(a, b, out, np.empty(short + 1, dtype))
    assert np.all(out == k)


@pytest.mark.parametrize("k", [1, 7, 8, 9, 15, 16, 37])
def test_vecmat_eight_rows_per_pass_gives_the_bits_of_four(k, dtype):
    # The deep loop (a ``b`` streamed from memory) keeps each element's FMA chain in
    # increasing ``p``: the same bits, for any remainder of eight rows and column range.
    rng = np.random.default_rng(k)
    a = rng.standard_normal(k).astype(dtype)
    b = rng.standard_normal((k, 75)).astype(dtype)
    for j0, j1 in [(0, 75), (3, 70), (5, 6)]:
        four, eight = np.full(75, np.nan, dtype), np.full(75, np.nan, dtype)
        _vecmat(a, b, j0, j1, four, False)
        _vecmat(a, b, j0, j1, eight, True)
        np.testing.assert_array_equal(four.view(np.uint8), eight.view(np.uint8))
        cols = b[:, j0:j1]
        exact = a.astype(np.float64) @ cols.astype(np.float64)
        assert np.all(np.abs(four[j0:j1] - exact) <= product_tolerance(a[None], cols, dtype)[0])


# Rows of 4 KiB multiples (float32 1024 and 2048 columns, float64 512), of 2 and 1 KiB, of an
# odd number of bytes' worth of elements; the sums half a 4 KiB residue period away.
@pytest.mark.parametrize("cols, period", [(1024, 4096), (2048, 4096), (512, 2048), (256, 1024),
                                          (100, 16), (784, 64)])
def test_unaliased_puts_the_sums_half_a_period_from_the_rows(cols, period):
    b = np.empty((4, cols), np.float32)
    pad = PAGE_BYTES // 4
    for shift in range(0, pad, 37):
        buf = np.empty(shift + 300 + pad, np.float32)[shift:]
        win = _unaliased(buf, 300, b)
        assert win.shape == (300,)
        start = (win.ctypes.data - buf.ctypes.data) // 4
        assert 0 <= start <= pad
        assert (b.ctypes.data - win.ctypes.data) % PAGE_BYTES == period // 2
    short = np.empty(300 + pad - 1, np.float32)
    assert _unaliased(short, 300, b).ctypes.data == short.ctypes.data
    # Shorter than asked: a new array, placed likewise.
    new = _unaliased(np.empty(299, np.float32), 300, b)
    assert new.shape == (300,)
    assert (b.ctypes.data - new.ctypes.data) % PAGE_BYTES == period // 2


@pytest.mark.parametrize("shape", [(1, 1024, 1024), (2, 300, 512), (1, 40, 1024)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gemm_rows_same_bits_wherever_the_workspace_lies(shape, dtype):
    """Where the row products keep their sums (``_unaliased``) changes nothing but timing."""
    m, k, n = shape
    rng = np.random.default_rng(k)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    size = workspace_size(m, n, k, dtype)
    outs = []
    for shift in (0, 8, 200, 1000):
        ws = np.full(size + shift, np.nan, dtype)[shift:]
        out = np.full((m, n), np.nan, dtype)
        gemm_rows(a, b, out, ws)
        outs.append(out)
    for out in outs[1:]:
        np.testing.assert_array_equal(out.view(np.uint8), outs[0].view(np.uint8))
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert np.all(np.abs(outs[0] - exact) <= product_tolerance(a, b, dtype))
