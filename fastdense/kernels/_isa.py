"""Which register tiles the kernels are compiled with: the vector instruction set of the CPU
that Numba compiles for (the host, or ``NUMBA_CPU_FEATURES``); and that CPU's vendor, which
some blocking choices follow (:data:`VENDOR`).

Kept apart from :mod:`fastdense.kernels._tiles` because the kernels' cache stamp
(:mod:`fastdense.kernels._codegen`) includes it, and is computed as each kernel is declared.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from llvmlite.binding import get_host_cpu_name
from numba.core import config
from numba.core.codegen import get_host_cpu_features

TILE_SETS = ("avx512", "avx2")


def target_tile_set(environ: Mapping[str, str] = os.environ, features: str | None = None) -> str:
    """``"avx512"`` where the target CPU has AVX-512F, else ``"avx2"``.

    Parameters
    ----------
    environ : mapping
        Where ``FASTDENSE_TILES`` (``avx512`` or ``avx2``), which overrides the choice, is read.
    features : str, optional
        LLVM's feature string (``"+avx2,-avx512f,..."``); by default Numba's target features.

    Raises
    ------
    ValueError
        If ``FASTDENSE_TILES`` is set to anything but one of :data:`TILE_SETS`.
    """
    forced = environ.get("FASTDENSE_TILES", "").strip().lower()
    if forced:
        if forced not in TILE_SETS:
            raise ValueError(f"FASTDENSE_TILES must be one of {', '.join(TILE_SETS)}, "
                             f"got {forced!r}")
        return forced
    if features is None:
        features = config.CPU_FEATURES if config.CPU_FEATURES is not None \
            else get_host_cpu_features()
    return "avx512" if "+avx512f" in features.split(",") else "avx2"


#: The tile set of this process's kernels.
TILES = target_tile_set()


#: LLVM CPU names of Intel cores (prefixes), for :func:`target_vendor`.
_INTEL_CPUS = ("skylake", "cascadelake", "cooperlake", "cannonlake", "icelake", "tigerlake",
               "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids", "alderlake",
               "raptorlake", "meteorlake", "arrowlake", "lunarlake", "pantherlake", "haswell",
               "broadwell", "sierraforest", "clearwaterforest", "gracemont", "diamondrapids")


def target_vendor(cpu_name: str | None = None) -> str:
    """``"intel"`` where Numba compiles for an Intel core, else ``"other"``.

    Some blocking choices are made per vendor, as a BLAS does per core.  On an Intel core
    (Emerald Rapids measured: 48 KiB L1, 2 MiB L2, prefetchers that stop at page boundaries) a
    weight matrix read in place a line per 4 KiB page, over several row panels, is much slower
    than packed, where the Zen 4 cores the other thresholds were measured on read it fastest
    in place; so is a transposed A (``kernels.gemm``); and float64 row blocks are twice as
    tall (``kernels._tiles``).  The choices change where data are read from, never the order
    of any sum: the bits are the same on every vendor.

    Parameters
    ----------
    cpu_name : str, optional
        LLVM's CPU name (``"emeraldrapids"``, ``"znver4"``); by default Numba's target CPU
        (``NUMBA_CPU_NAME``, else the host).
    """
    if cpu_name is None:
        cpu_name = config.CPU_NAME if config.CPU_NAME is not None else get_host_cpu_name()
    return "intel" if cpu_name.lower().startswith(_INTEL_CPUS) else "other"


#: The vendor whose blocking choices this process's kernels make.
VENDOR = target_vendor()
