"""``fastdense.kernels._codegen``: the vector intrinsics give the bits of the scalar loops they
replace in the micro-kernel epilogues, special values included; kernels cached by Numba are
stale once any module of their package changed, and keep calling kernels by symbol correctly
when loaded from the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit

from fastdense.kernels._codegen import (
    add_n,
    bias_act_n,
    relu_n,
    sgd_n,
    strided_view,
    transpose8,
)
from tests.helpers import assert_same_bits

SPECIAL = [0.0, -0.0, np.nan, np.inf, -np.inf, -1.5, 2.25, 1e-40, -1e-40]


@njit(cache=True)
def _add16(dst, di, src, si):
    add_n(dst, di, src, si, 16)


@njit(cache=True)
def _relu16(dst, di, src, si):
    relu_n(dst, di, src, si, 16)


@njit(cache=True)
def _sgd16(dst, di, src, si, lr):
    sgd_n(dst, di, src, si, lr, 16)


@njit(cache=True)
def _transpose8(dst, di, dstride, src, si, sstride):
    transpose8(dst, di, dstride, src, si, sstride)


def _data(dtype, n, seed):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(n).astype(dtype)
    v[: len(SPECIAL)] = np.array(SPECIAL, dtype=dtype)
    return rng.permutation(v)


def test_add_n_at_offsets(dtype):
    dst = _data(dtype, 40, 0)
    src = _data(dtype, 40, 1)
    want = dst.copy()
    want[5:21] = want[5:21] + src[19:35]
    _add16(dst, 5, src, 19)
    assert_same_bits(dst, want)


@pytest.mark.parametrize(("si", "sstride", "di", "dstride"), [(0, 8, 0, 8), (3, 29, 7, 32),
                                                              (11, 16, 2, 9)])
def test_transpose8_moves_each_bit_and_nothing_else(dtype, si, sstride, di, dstride):
    src = _data(dtype, 8 * sstride + si + 8, 5)
    dst = _data(dtype, 8 * dstride + di + 8, 6)
    want = dst.copy()
    block = np.lib.stride_tricks.as_strided(src[si:], (8, 8), (sstride * src.itemsize,
                                                               src.itemsize))
    for c in range(8):
        want[di + c * dstride:di + c * dstride + 8] = block[:, c]
    _transpose8(dst, di, dstride, src, si, sstride)
    assert_same_bits(dst, want)


def test_relu_n_matches_the_activation(dtype):
    src = _data(dtype, 40, 2)
    dst = np.full(40, 7.0, dtype=dtype)
    _relu16(dst, 3, src, 11)
    want = np.full(40, 7.0, dtype=dtype)
    seg = src[11:27]
    # The activation's rule: v < 0 gives zero; NaN, -0.0 and everything else pass through.
    want[3:19] = np.where(seg < 0, dtype(0), seg)
    assert_same_bits(dst, want)
    assert np.isnan(dst[3:19]).sum() == np.isnan(seg).sum()


def test_relu_n_in_place(dtype):
    v = _data(dtype, 16, 3)
    want = np.where(v < 0, dtype(0), v)
    _relu16(v, 0, v, 0)
    assert_same_bits(v, want)


@pytest.mark.parametrize("lr", [1e-3, 0.1, 3.0])
def test_sgd_n_rounds_like_the_scalar_loop(dtype, lr):
    w = _data(dtype, 32, 4)
    g = _data(dtype, 32, 5)
    want = w.copy()
    # Scalar semantics: ``w[j] -= lr * g[j]`` in float64, rounded to w's dtype.
    want[8:24] = (want[8:24].astype(np.float64) - lr * g[2:18].astype(np.float64)).astype(dtype)
    _sgd16(w, 8, g, 2, lr)
    assert_same_bits(w, want)


def test_typing_rejects_mixed_dtypes():
    with pytest.raises(Exception, match="add_n"):
        _add16(np.zeros(16, np.float32), 0, np.zeros(16, np.float64), 0)


@njit(cache=True, _nrt=False)
def _panel_sum(a, r0, c0, count, steps, rows):
    """Sum of ``v[t, p, i] * (1 + t + 10 p + 100 i)`` over the (count, steps, rows) panels of
    ``a``'s rows from ``(r0, c0)`` transposed, made without reference counting (as in gemm)."""
    s0, s1 = a.strides
    v = strided_view(a[r0:, c0:], (count, steps, rows), (rows * s0, s1, s0))
    total = 0.0
    for t in range(v.shape[0]):
        for p in range(v.shape[1]):
            for i in range(v.shape[2]):
                total += v[t, p, i] * (1 + t + 10 * p + 100 * i)
    return total


@pytest.mark.parametrize(("r0", "c0", "count", "steps", "rows"), [(0, 0, 3, 5, 6), (2, 3, 2, 4, 4),
                                                                  (7, 1, 0, 5, 6)])
def test_strided_view_is_as_strided(dtype, r0, c0, count, steps, rows):
    a = np.random.default_rng(7).standard_normal((20, 11)).astype(dtype)[:, 1:]
    s0, s1 = a.strides
    v = np.lib.stride_tricks.as_strided(a[r0:, c0:], (count, steps, rows), (rows * s0, s1, s0))
    t, p, i = np.meshgrid(np.arange(count), np.arange(steps), np.arange(rows), indexing="ij")
    want = float(np.sum(v.astype(np.float64) * (1 + t + 10 * p + 100 * i)))
    assert _panel_sum(a, r0, c0, count, steps, rows) == pytest.approx(want, rel=1e-12)


@njit(cache=True)
def _bias_act16(dst, di, src, si, bias, bi, relu):
    bias_act_n(dst, di, src, si, bias, bi, relu, 16)


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
def test_bias_act_n_is_add_then_activation(dtype, relu):
    src = _data(dtype, 40, 6)
    bias = _data(dtype, 40, 7)
    dst = np.full(40, 7.0, dtype=dtype)
    _bias_act16(dst, 4, src, 9, bias, 21, relu)
    want = np.full(40, 7.0, dtype=dtype)
    v = src[9:25] + bias[21:37]
    want[4:20] = np.where(v < 0, dtype(0), v) if relu else v
    assert_same_bits(dst, want)


# A package of two kernel modules: ``b.run`` links ``a.count`` and calls ``a.fill`` by symbol.
_CALLEE = textwrap.dedent("""
    from fastdense.kernels._codegen import kernel

    @kernel
    def count(n):
        return n // {v}

    @kernel(nrt=False, link=False)
    def fill(out, n):
        for i in range(n):
            out[i] = {v}.0
""")
_CALLER = textwrap.dedent("""
    from fastdense.kernels._codegen import kernel
    from toy.a import count, fill

    @kernel
    def run(out):
        fill(out, count(out.shape[0]))
""")
_MAIN = textwrap.dedent("""
    import json
    import numpy as np
    from toy.b import run
    out = np.zeros(4)
    run(out)
    print(json.dumps([out.tolist(), len(run.stats.cache_hits)]))
""")


def _toy_package(root, **modules: str):
    """Package ``toy`` under ``root`` with the given modules, and an environment whose Python
    imports it and whose Numba caches into ``root``."""
    pkg = root / "toy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in modules.items():
        (pkg / f"{name}.py").write_text(text)
    pythonpath = os.pathsep.join([str(root), *sys.path])
    return pkg, {**os.environ, "PYTHONPATH": pythonpath, "NUMBA_CACHE_DIR": str(root / "cache")}


def test_a_callee_module_edit_recompiles_its_cached_callers(tmp_path):
    # Numba alone dates ``run`` by b.py only: after a.py changes it would load ``run`` with its
    # linked copy of the old ``count`` and call the new ``fill``, giving [2, 2, 2, 2], which
    # no version of the source computes (with a workspace size, a write out of bounds).
    pkg, env = _toy_package(tmp_path, b=_CALLER)

    def run(version: int) -> tuple[list[float], int]:
        (pkg / "a.py").write_text(_CALLEE.format(v=version))
        done = subprocess.run([sys.executable, "-c", _MAIN], env=env, capture_output=True,
                              text=True, timeout=300, check=True, cwd=tmp_path)
        values, hits = json.loads(done.stdout)
        return values, hits

    assert run(1) == ([1.0] * 4, 0)
    assert run(1) == ([1.0] * 4, 1)  # unchanged package: loaded from the cache
    assert run(2) == ([2.0, 2.0, 0.0, 0.0], 0)
    assert run(2) == ([2.0, 2.0, 0.0, 0.0], 1)


_MIDDLE = textwrap.dedent("""
    from fastdense.kernels._codegen import kernel
    from toy.a import fill

    @kernel
    def mid(out):
        fill(out, out.shape[0])

    @kernel
    def top(out):
        mid(out)
""")
_CALLS = textwrap.dedent("""
    import sys
    import numpy as np
    from toy.b import mid, top
    out = np.zeros(4)
    for name in sys.argv[1:]:
        {"mid": mid, "top": top}[name](out)
    print(out.tolist())
""")


def test_a_caller_compiled_over_a_cached_callee_finds_the_kernels_it_calls(tmp_path):
    # ``top`` links ``mid``, which calls ``a.fill`` by symbol.  Compiled in a process where
    # ``mid`` came from the cache, ``top`` used to be saved without the hook that binds that
    # symbol, and a later process loading ``top`` alone crashed calling it.
    _, env = _toy_package(tmp_path, a=_CALLEE.format(v=1), b=_MIDDLE)

    def run(*names: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _CALLS, *names], env=env,
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)

    for names in (["mid"], ["mid", "top"], ["top"]):
        done = run(*names)
        assert done.returncode == 0, (names, done.returncode, done.stderr[-2000:])
        assert json.loads(done.stdout) == [1.0] * 4
