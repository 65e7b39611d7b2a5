"""Compile-time tile constants and micro-kernel selection per dtype."""

from numba import types
from numba.extending import overload

from fastdense.kernels._microkernels import (
    MR_F32,
    MR_F64,
    NR_F32,
    NR_F64,
    STRIP_F32,
    STRIP_F64,
    strip_64,
    strip_128,
    ukernel_8x16,
    ukernel_8x32,
)

# Cache blocking.  KC * NR (B micro-panel) stays in L1 next to the A stream, MC * KC (A block) in
# L2 (1-2 MiB on the targets), NC * KC (B block) in L3.
KC_F32, MC_F32, NC_F32 = 512, 64, 2048
KC_F64, MC_F64, NC_F64 = 512, 32, 1024

# ``(MR, NR, KC, MC, NC)`` by dtype name, for Python callers sizing workspaces.
BLOCKING = {
    "float32": (MR_F32, NR_F32, KC_F32, MC_F32, NC_F32),
    "float64": (MR_F64, NR_F64, KC_F64, MC_F64, NC_F64),
}


def _ukernel(kc, a2, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu):
    """Dispatch to the dtype's micro-kernel (resolved at compile time)."""


@overload(_ukernel, jit_options={"cache": True})
def _ukernel_ol(kc, a2, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu):
    fn = ukernel_8x32 if a2.dtype == types.float32 else ukernel_8x16

    def impl(kc, a2, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu):
        return fn(kc, a2, bp, bo, bps, tile, out, i0, j0, mode, lr, bias, y, relu)

    return impl


def _blocking(a):
    """``(MR, NR, KC, MC, NC)`` for ``a``'s dtype (compile-time constants)."""


@overload(_blocking, jit_options={"cache": True})
def _blocking_ol(a):
    if a.dtype == types.float32:
        return lambda a: (MR_F32, NR_F32, KC_F32, MC_F32, NC_F32)
    return lambda a: (MR_F64, NR_F64, KC_F64, MC_F64, NC_F64)





def _strip(x, b, j0, out):
    """Dispatch to the dtype's vector-matrix strip (resolved at compile time)."""


@overload(_strip, jit_options={"cache": True})
def _strip_ol(x, b, j0, out):
    fn = strip_128 if out.dtype == types.float32 else strip_64

    def impl(x, b, j0, out):
        return fn(x, b, j0, out)

    return impl


def _strip_width(a):
    """Columns of the dtype's vector-matrix strip (a compile-time constant)."""


@overload(_strip_width, jit_options={"cache": True})
def _strip_width_ol(a):
    width = STRIP_F32 if a.dtype == types.float32 else STRIP_F64
    return lambda a: width
