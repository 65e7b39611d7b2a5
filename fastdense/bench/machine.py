"""The machine a benchmark ran on, and its measured floating-point peak.

Ratios mean little without the machine: CPU, cores, thread count, library versions and the
BLAS kernel actually selected at run time (OpenBLAS picks one per CPU, and
``OPENBLAS_CORETYPE`` can force a slower one).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

import numba
import numpy as np

import fastdense
from fastdense.bench.pinning import available_cores, pinned_threads
from fastdense.kernels._isa import TILES, VENDOR

ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "NUMBA_DISABLE_JIT")

PEAK_SIZE = 2048
PEAK_METHOD = (f"best of NumPy's {PEAK_SIZE}x{PEAK_SIZE} GEMM (the BLAS's FMA-bound kernel) "
               "over several calls, at the benchmark's thread count")


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def blas_info() -> list[dict[str, Any]]:
    """The BLAS libraries loaded, with version, kernel (``architecture``) and threading."""
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer",
            "num_threads", "filepath")
    found = []
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        entry = {k: info.get(k) for k in keys}
        # Several BLAS copies can be loaded (NumPy's and SciPy's wheels each ship one): name
        # the package that owns each, so the reader knows which one NumPy's ``@`` runs on.
        entry["owner"] = _owner(str(info.get("filepath", "")))
        found.append(entry)
    return found


def _owner(path: str) -> str | None:
    for part in reversed(path.replace("\\", "/").split("/")):
        if part.endswith(".libs"):
            return part[: -len(".libs")]
    return None


def _torch_version() -> str | None:
    torch = sys.modules.get("torch")
    return None if torch is None else str(torch.__version__)


def describe(threads: int) -> dict[str, Any]:
    """A JSON-ready description of the machine and software.

    Parameters
    ----------
    threads : int
        The thread count the benchmark pins every implementation to.
    """
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = None
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "available_cores": available_cores(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threading_layer": layer,
        "fastdense": fastdense.__version__,
        # Which register tiles the kernels were compiled with (the CPU's vector instruction set).
        "fastdense_tiles": TILES,
        # Whose blocking choices they make (kernels._isa.target_vendor).
        "fastdense_vendor": VENDOR,
        "torch": _torch_version(),
        "blas": blas_info(),
        "load_average_1min": load_average(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
    }


def measure_peak(dtype: str, threads: int, calls: int = 6) -> float:
    """Attainable GFLOP/s: the best of ``calls`` large NumPy GEMMs in ``dtype``.

    A tuned BLAS at this size runs its FMA-bound inner kernel almost all the time, so this is
    the practical ceiling of the machine for these threads (below the data-sheet peak, which
    ignores clock limits under load).  Takes about a second.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((PEAK_SIZE, PEAK_SIZE)).astype(dtype)
    b = rng.standard_normal((PEAK_SIZE, PEAK_SIZE)).astype(dtype)
    best = float("inf")
    with pinned_threads(threads):
        a @ b  # warm the BLAS pool and caches
        for _ in range(calls):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    return 2 * PEAK_SIZE**3 / best / 1e9


def load_average() -> float | None:
    """The 1-minute load average, None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def busy_warning(threshold: float = 0.5) -> str | None:
    """A warning text if other processes already keep the CPU busy before the benchmark.

    The benchmark pins as many threads as there are cores; a parallel kernel then waits for
    its slowest thread, so a single competing process can multiply timings erratically.
    """
    load = load_average()
    if load is None or load < threshold:
        return None
    return (f"the machine is busy before the benchmark starts (1-minute load average "
            f"{load:.2f}): other processes compete for the cores, so timings will be noisy "
            "and ratios unreliable. Rerun on an idle machine (or compare single cores with "
            "--threads 1, which suffers less).")


def openblas_coretype_warning() -> str | None:
    """A warning text if ``OPENBLAS_CORETYPE`` (or ``OPENBLAS_L2_SIZE``) is set.

    It is only a warning: the variable is left as it is, and recorded in the JSON.
    """
    # OPENBLAS_L2_SIZE overrides the cache size OpenBLAS tunes its blocking for: same effect.
    found = [f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
             if k in os.environ]
    if not found:
        return None
    unset = " ".join(f"-u {item.split('=')[0]}" for item in found)
    return (f"{', '.join(found)} set: it overrides OpenBLAS's tuning for this CPU and can "
            "make NumPy slower than on a default install, inflating fastdense's ratios. "
            f"Rerun with `env {unset} python -m fastdense bench ...` for figures "
            "representative of NumPy.")
