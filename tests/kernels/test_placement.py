"""Worker placement in parallel regions (:mod:`fastdense.kernels._placement`)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from numba import njit, prange

import fastdense as fd
from fastdense.kernels import activation as act
from fastdense.kernels import dense
from fastdense.kernels._placement import (
    MAX_YIELDS,
    SPIN_COUNT,
    caller_waits,
    current_cpu,
    leave_cpu,
    region_opens,
    shorten_spin,
    worker_arrives,
)
from fastdense.kernels.gemm import (
    VECTOR_THREADS_BYTES,
    _unaliased,
    gemm,
    gemm_rows,
    vector_block_rows,
    workspace_size,
)

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux system calls")


@njit
def _where():
    return current_cpu()


@njit
def _leave(cpu):
    return leave_cpu(cpu)


@njit(parallel=True)
def _region(ctr, nthreads):
    caller = region_opens(ctr, 0)
    for _ in prange(nthreads):
        worker_arrives(ctr, 0, caller)
        caller_waits(ctr, 0, nthreads)


@linux
def test_current_cpu_is_allowed():
    assert _where() in os.sched_getaffinity(0)


@linux
def test_leave_cpu_moves_and_keeps_the_mask():
    allowed = os.sched_getaffinity(0)
    cpu = _where()
    moved = _leave(cpu)
    # The thread left ``cpu`` (if it had anywhere else to go) and is pinned nowhere.
    assert moved == (1 if len(allowed) > 1 else 0)
    assert os.sched_getaffinity(0) == allowed
    # CPUs outside the mask or outside cpu_set_t change nothing.
    for other in (-1, 1024, 5000, max(allowed) + 1):
        if other not in allowed:
            assert _leave(other) == 0
    assert os.sched_getaffinity(0) == allowed


def test_region_counts_its_workers():
    n = numba.get_num_threads()
    ctr = np.zeros(1)
    _region(ctr, n)
    assert ctr.view(np.int64)[0] == n - 1


WAIT_ALONE = textwrap.dedent("""
    import numpy as np
    from numba import njit
    from fastdense.kernels._placement import caller_waits

    @njit
    def wait_alone(ctr):
        caller_waits(ctr, 0, 2)

    wait_alone(np.zeros(1))
    print("ok")
""")


def test_caller_wait_is_bounded():
    """Called outside a region the caller is thread 0 and no worker will ever check in: it
    must give up after MAX_YIELDS yields instead of hanging (in a subprocess, so that a hang
    fails the test by its timeout)."""
    assert MAX_YIELDS > 0
    done = subprocess.run([sys.executable, "-c", WAIT_ALONE], capture_output=True, text=True,
                          timeout=300, check=True)
    assert done.stdout.split() == ["ok"]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_products_count_their_workers():
    """The packed product, the row product and the batch-1 backward pass run the check-in
    (their counters, after the call, hold the workers of the last region)."""
    rng = np.random.default_rng(0)
    with fd.threads(2):
        m, k, n = 64, 300, 200
        a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
        ws = np.zeros(workspace_size(m, n, k, np.float64))
        gemm(a, b, np.empty((m, n)), False, False, ws)
        assert ws[:2].view(np.int64)[1] == 1
        k, n = 784, 512
        kb = vector_block_rows(k, n, np.float64)
        need = -(-k // kb) * n
        a, b = rng.standard_normal((1, k)), rng.standard_normal((k, n))
        ws = np.zeros(workspace_size(1, n, k, np.float64))
        assert ws.shape[0] > need
        gemm_rows(a, b, np.empty((1, n)), ws)
        # The partial sums and the counter lie where ``_unaliased`` puts them.
        window = _unaliased(ws, need + 1, b)
        assert window[need:need + 1].view(np.int64)[0] == 1
        # The batch-1 backward pass: after the two threads' lanes for the input gradient.
        w = rng.standard_normal((k, n))
        g = rng.standard_normal((1, n))
        e = np.empty(0)
        ws = np.zeros(dense.workspace_size(k, n, np.float64))
        dense.backward_rows(a, w, e, g, g, g, act.LINEAR, np.empty_like(g), np.empty_like(w), e,
                            np.empty_like(a), 0.1, 0.0, 0.0, 0.0, 0.0, True, ws)
        lanes = 2 * dense._LANES
        assert ws[lanes:lanes + 1].view(np.int64)[0] == 1


def _rows_slot(ws, k, n, b):
    """The check-in count of a batch-1 :func:`gemm_rows` / ``forward_rows`` call's workspace
    (an integer of the workspace's item size)."""
    need = -(-k // vector_block_rows(k, n, b.dtype)) * n
    slot = _unaliased(ws, need + 1, b)[need:need + 1]
    return slot.view(np.int64 if slot.itemsize == 8 else np.int32)[0]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_products_share_weights_from_a_size(dtype):
    """A batch-1 product with no backward pass after it (``gemm_rows``) runs its row blocks on
    one thread below ``VECTOR_THREADS_BYTES`` of weights (1 x 256 @ 256 x 300: float32 300 KiB,
    float64 600 KiB), so no worker checks in; a layer's forward does too until its first
    backprop, and from then on splits them as the backprop does."""
    rng = np.random.default_rng(1)
    k, n = 256, 300
    a = rng.standard_normal((1, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    assert vector_block_rows(k, n, dtype) < k  # summed in row blocks
    threaded = k * n * np.dtype(dtype).itemsize >= VECTOR_THREADS_BYTES
    assert threaded == (dtype == np.float64)
    untouched = np.array([7], dtype).view(np.int64 if dtype == np.float64 else np.int32)[0]
    with fd.threads(2):
        ws = np.full(workspace_size(1, n, k, dtype), 7, dtype)
        gemm_rows(a, b, np.empty((1, n), dtype), ws)
        assert _rows_slot(ws, k, n, b) == (1 if threaded else untouched)
        layer = fd.Dense(n, dtype=dtype)
        y = layer.forward(a)  # builds the layer and its workspace
        ws = layer._workspace["ws"]
        for trained in (False, True):
            if trained:
                layer.backprop(np.ones_like(y), fd.SGD(0.01))
            for _ in range(2):  # a call that plans, then its replay
                ws.fill(7)
                y = layer.forward(a)
                expected = 1 if threaded or trained else untouched
                assert _rows_slot(ws, k, n, layer.weight) == expected


ONE_CPU = textwrap.dedent("""
    import os
    import numpy as np
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    import numba
    import fastdense as fd
    numba.set_num_threads(2)
    rng = np.random.default_rng(0)
    for m, k, n in [(64, 300, 200), (1, 784, 512), (2, 300, 300)]:
        a = rng.standard_normal((m, k))
        b = rng.standard_normal((k, n))
        with fd.threads(1):
            one = fd.matmul(a, b)
        two = fd.matmul(a, b)
        assert np.array_equal(one, two), (m, k, n)
    print("ok", os.sched_getaffinity(0) == {cpu})
""")


@linux
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_two_threads_on_one_cpu_finish():
    """Both threads confined to one CPU: no worker can leave it, and every region must still
    end (the caller yields to the worker) with the bits of one thread."""
    # Numba would size its pool to the one CPU it sees.
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", ONE_CPU], capture_output=True, text=True,
                          timeout=900, check=True, env=env)
    assert done.stdout.split() == ["ok", "True"]


@pytest.mark.parametrize("chosen", [{}, {"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "active"},
                                    {"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": "7"}])
@pytest.mark.parametrize("started", [False, True])
def test_spin_is_shortened_unless_chosen_or_started(chosen, started):
    environ = dict(chosen)
    assert shorten_spin(environ, started) == (not chosen and not started)
    assert environ == (chosen or ({} if started else {"GOMP_SPINCOUNT": str(SPIN_COUNT)}))


SPIN_OF_IMPORT = "import os, fastdense; print(os.environ.get('GOMP_SPINCOUNT'))"


@pytest.mark.parametrize("chosen", [None, "123"])
def test_importing_fastdense_shortens_the_spin_before_numba_starts_threads(chosen):
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    if chosen is not None:
        env["GOMP_SPINCOUNT"] = chosen
    done = subprocess.run([sys.executable, "-c", SPIN_OF_IMPORT], capture_output=True, text=True,
                          timeout=300, check=True, env=env)
    assert done.stdout.split() == [chosen or str(SPIN_COUNT)]
    # Threads Numba started before fastdense was imported have read their libgomp's setting.
    started = "import numba.np.ufunc.parallel as p; p._launch_threads(); " + SPIN_OF_IMPORT
    done = subprocess.run([sys.executable, "-c", started], capture_output=True, text=True,
                          timeout=300, check=True, env=env)
    assert done.stdout.split() == [chosen or "None"]
