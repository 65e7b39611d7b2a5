"""The register tiles per vector instruction set: which set is chosen, every generated
micro-kernel against a float64 reference, and the same bits from both sets."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastdense.kernels import _microkernels as mk
from fastdense.kernels import dense as kdense
from fastdense.kernels._isa import TILE_SETS, TILES, target_tile_set, target_vendor
from fastdense.kernels._tiles import BLOCKING, HALF_MR
from fastdense.kernels.dense import forward
from fastdense.kernels.gemm import gemm
from tests.kernels.conftest import product_tolerance

# (kernel, MR, NR, dtype) of both tile sets: each set's kernels run on any x86-64 CPU (the
# other set's only slowly), so all four are checked on every machine.
KERNELS = [
    (mk.ukernel_8x32, mk.MR_F32, mk.NR_F32, np.float32),
    (mk.ukernel_8x16, mk.MR_F64, mk.NR_F64, np.float64),
    (mk.ukernel_6x16, mk.MR_F32_AVX2, mk.NR_F32_AVX2, np.float32),
    (mk.ukernel_6x8, mk.MR_F64_AVX2, mk.NR_F64_AVX2, np.float64),
    (mk.ukernel_4x16, mk.HALF_MR_AVX2, mk.NR_F32_AVX2, np.float32),
    (mk.ukernel_4x8, mk.HALF_MR_AVX2, mk.NR_F64_AVX2, np.float64),
]
KERNEL_IDS = ["8x32", "8x16", "6x16", "6x8", "4x16", "4x8"]


@pytest.mark.parametrize(("features", "expected"), [
    ("+sse4.2,+avx,+avx2,+fma,+avx512f,+avx512bw,+avx512vl", "avx512"),
    ("+sse4.2,+avx,+avx2,+fma,-avx512f,-avx512bw", "avx2"),
    ("+avx2,+avx512vl", "avx2"),  # AVX-512F itself is what the tiles need
    ("", "avx2"),
])
def test_tile_set_follows_the_target_features(features, expected):
    assert target_tile_set({}, features) == expected


def test_tile_set_override():
    avx512 = "+avx2,+avx512f"
    assert target_tile_set({"FASTDENSE_TILES": "avx2"}, avx512) == "avx2"
    assert target_tile_set({"FASTDENSE_TILES": " AVX512 "}, "+avx2") == "avx512"
    assert target_tile_set({"FASTDENSE_TILES": ""}, avx512) == "avx512"
    with pytest.raises(ValueError, match=r"FASTDENSE_TILES must be one of avx512, avx2, got 'sse'"):
        target_tile_set({"FASTDENSE_TILES": "sse"}, avx512)


@pytest.mark.parametrize(("cpu_name", "expected"), [
    ("emeraldrapids", "intel"), ("sapphirerapids", "intel"), ("skylake-avx512", "intel"),
    ("icelake-server", "intel"), ("haswell", "intel"), ("znver4", "other"),
    ("znver3", "other"), ("generic", "other"), ("x86-64-v4", "other"),
])
def test_vendor_follows_the_cpu_name(cpu_name, expected):
    assert target_vendor(cpu_name) == expected


def test_blocking_of_the_active_set():
    assert TILES in TILE_SETS
    shapes = {"avx512": {"float32": (8, 32), "float64": (8, 16)},
              "avx2": {"float32": (6, 16), "float64": (6, 8)}}[TILES]
    for dtype, (mr, nr, kc, mc, nc) in BLOCKING.items():
        assert (mr, nr) == shapes[dtype]
        assert HALF_MR == (4 if TILES == "avx2" else 0)
        assert kc == 512  # the same in both sets: the same bits
        assert mc % mr == 0 and nc % nr == 0


def _panels(rng, kc, mr, nr, bps, dtype, nt):
    """``nt`` A panels as a strided (nt, kc, mr) view of the rows of ``a`` (nt * mr, kc), and a
    B panel of row stride ``bps``."""
    a_full = rng.standard_normal((nt * mr + 3, kc + 2)).astype(dtype)
    a = a_full[1:nt * mr + 1, 2:kc + 2]
    s0, s1 = a.strides
    a3 = np.lib.stride_tricks.as_strided(a, (nt, kc, mr), (mr * s0, s1, s0))
    bp = rng.standard_normal(5 + max(kc, 1) * bps).astype(dtype)
    return a, a3, bp, 5


@pytest.mark.parametrize("kc", [0, 1, 7, 64])
@pytest.mark.parametrize("in_place", [False, True], ids=["packed", "in_place"])
@pytest.mark.parametrize(("kern", "mr", "nr", "dtype"), KERNELS, ids=KERNEL_IDS)
def test_microkernel_modes_match_reference(kern, mr, nr, dtype, kc, in_place):
    """Every store mode, for one tile and for a column of three (the HALF_MR-row kernels take
    one panel a call; mode 0, which leaves the tile to the caller, one tile only)."""
    for nt in (1,) if kern in (mk.ukernel_4x16, mk.ukernel_4x8) else (1, 3):
        _check_modes(kern, mr, nr, dtype, kc, in_place, nt)


def _check_modes(kern, mr, nr, dtype, kc, in_place, nt):
    rng = np.random.default_rng(kc * 31 + nr + nt)
    bps = nr + 11 if in_place else nr
    a, a3, bp, bo = _panels(rng, kc, mr, nr, bps, dtype, nt)
    b = np.stack([bp[bo + p * bps:bo + p * bps + nr] for p in range(kc)]) if kc else \
        np.zeros((0, nr), dtype)
    ref = a.astype(np.float64) @ b.astype(np.float64)  # row t * mr + i: tile t's row i
    tol = product_tolerance(a, b, dtype)
    bias = rng.standard_normal(nr + 4).astype(dtype)
    lr = 0.25
    i0, j0 = 2, 3
    rows = nt * mr
    base = rng.standard_normal((rows + 4, nr + 6)).astype(dtype)
    win = (slice(i0, i0 + rows), slice(j0, j0 + nr))
    for mode in range(7) if nt == 1 else range(1, 7):
        tile = np.full(mr * nr, np.nan, dtype)
        out = base.copy()
        y = base.copy() + 1 if mode in (4, 5, 6) else out
        y0 = y.copy()
        kern(kc, a3, bp, bo, bps, tile, out, i0, j0, mode, lr, bias[:nr + j0], y, mode != 6)
        t = tile.reshape(mr, nr)
        if mode <= 3:  # the epilogues of modes 4 to 6 work on the tile in place
            # The tile holds the last panel's product.
            assert np.all(np.abs(t - ref[-mr:]) <= tol[-mr:]), mode
        o64 = base[win].astype(np.float64)
        if mode == 0:
            expect_out = o64
        elif mode == 1:
            expect_out = ref
        elif mode == 2:
            expect_out = o64 + ref
        elif mode == 3:
            expect_out = o64 - lr * ref
        elif mode == 4:
            expect_out = ref + bias[j0:j0 + nr]
        elif mode == 5:
            expect_out = o64 + ref + bias[j0:j0 + nr]
        else:
            expect_out = o64 - lr * (ref + y0[win])
        slack = 4 * np.finfo(dtype).eps * (np.abs(expect_out) + 1)
        assert np.all(np.abs(out[win] - expect_out) <= tol + slack), mode
        if mode in (4, 5):
            assert np.array_equal(y[win], np.maximum(out[win], 0)), mode
        # Nothing outside the tiles' window changes.
        outside = np.ones(out.shape, bool)
        outside[win] = False
        assert np.array_equal(out[outside], base[outside]), mode


@pytest.mark.parametrize("kc", [1, 37, 512])
def test_tile_shapes_give_the_same_bits(kc):
    """Each element is one FMA chain in increasing step order whatever the tile: an 8 x 32
    float32 block computed by the AVX-512 kernel or by the AVX2 ones in 6 x 16 or 4 x 16 pieces
    (and likewise 8 x 16 in 6 x 8 or 4 x 8 pieces in float64) is bitwise the same."""
    rng = np.random.default_rng(kc)
    for big, small, dtype in ((0, 2, np.float32), (1, 3, np.float64), (0, 4, np.float32),
                              (1, 5, np.float64)):
        kbig, mrb, nrb, _ = KERNELS[big]
        ksmall, mrs, nrs, _ = KERNELS[small]
        rows = 2 * mrs  # covers the big tile's rows: 12 or 8 >= 8
        a = rng.standard_normal((rows, kc)).astype(dtype)
        b = rng.standard_normal((kc, nrb)).astype(dtype)
        empty = np.zeros(0, dtype)
        whole = np.empty(mrb * nrb, dtype)
        kbig(kc, a[:mrb].T[None], b.ravel(), 0, nrb, whole, b, 0, 0, 0, 0.0, empty, b, False)
        pieces = np.empty((rows, nrb), dtype)
        tile = np.empty(mrs * nrs, dtype)
        for i in range(0, rows, mrs):
            for j in range(0, nrb, nrs):
                ksmall(kc, a[i:i + mrs].T[None], b.ravel(), j, nrb, tile, b, 0, 0, 0, 0.0, empty, b,
                       False)
                pieces[i:i + mrs, j:j + nrs] = tile.reshape(mrs, nrs)
        assert np.array_equal(whole.reshape(mrb, nrb), pieces[:mrb])


# Shapes around both sets' MR, NR and KC, read in place and packed, one and several KC and
# row blocks, and B of fewer columns than a panel (read in place with the AVX-512 tiles, see
# ``gemm._narrow_b_tail``); (m, k, n).
_CROSS_SHAPES = [(7, 511, 33), (13, 1030, 17), (50, 300, 129), (33, 1024, 1024), (100, 600, 70),
                 (32, 784, 128), (28, 520, 40), (4, 300, 50), (20, 600, 7), (300, 100, 12)]
_FEW_UNITS = [(64, 300, 4), (37, 600, 3)]
_CROSS_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from fastdense.kernels._isa import TILES
    from tests.kernels.test_tiles import _CROSS_SHAPES, _products
    assert TILES == sys.argv[2], TILES
    np.savez(sys.argv[1], **_products(_CROSS_SHAPES))
""")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _products(shapes):
    out = {}
    for dtype in (np.float32, np.float64):
        for i, (m, k, n) in enumerate(shapes):
            rng = np.random.default_rng(i)
            a = rng.standard_normal((m, k)).astype(dtype)
            b = rng.standard_normal((k, n)).astype(dtype)
            bias = rng.standard_normal(n).astype(dtype)
            c = np.empty((m, n), dtype)
            gemm(a, b, c, False, False)
            ct = np.empty((k, n), dtype)
            gemm(a, c, ct, True, False)
            y = np.empty((m, n), dtype)
            forward(a, b, bias, 1, y, y)
            key = f"{np.dtype(dtype).name}_{i}"
            out["nn_" + key], out["tn_" + key], out["fwd_" + key] = c, ct, y
        # Layers of few units, whose forward product runs by row tiles or, with the AVX2
        # tiles, transposed (the first shape in float32), as the layer chooses.
        for i, (m, k, n) in enumerate(_FEW_UNITS):
            rng = np.random.default_rng(i)
            a = rng.standard_normal((m, k)).astype(dtype)
            b = rng.standard_normal((k, n)).astype(dtype)
            bias = rng.standard_normal(n).astype(dtype)
            ws = np.empty(kdense.narrow_workspace_size(m, k, n, dtype), dtype)
            y = np.empty((m, n), dtype)
            narrow = kdense.product_paths(m, k, n, dtype)[1]
            assert narrow
            kdense.forward_for(1, False, narrow)(a, b, bias, 1, y, y, ws)
            out[f"few_{np.dtype(dtype).name}_{i}"] = y
    return out


def test_other_tile_set_gives_the_same_bits(tmp_path):
    """The whole product (packing, edge tiles, KC blocks, the fused bias and ReLU) with the
    other tile set, compiled in a subprocess into its own cache, matches this process bit for
    bit."""
    other = next(t for t in TILE_SETS if t != TILES)
    path = tmp_path / "other.npz"
    env = dict(os.environ, FASTDENSE_TILES=other, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run([sys.executable, "-c", _CROSS_SCRIPT, str(path), other], env=env, cwd=_ROOT,
                   check=True, timeout=600)
    theirs = np.load(path)
    ours = _products(_CROSS_SHAPES)
    assert sorted(theirs.files) == sorted(ours)
    for key, value in ours.items():
        assert np.array_equal(theirs[key], value), key
