"""Which register tiles the kernels are compiled with: the vector instruction set of the CPU
that Numba compiles for (the host, or ``NUMBA_CPU_FEATURES``).

Kept apart from :mod:`fastdense.kernels._tiles` because the kernels' cache stamp
(:mod:`fastdense.kernels._codegen`) includes it, and is computed as each kernel is declared.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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
