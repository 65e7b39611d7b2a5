"""Element-wise activation passes compiled per activation when first used, and called by the
product kernels through a table of their addresses.

A loop of its own per activation in ``gemm._activate_rows`` (values) and ``pack.dz_rows``
(derivative times the upstream gradient) vectorizes, but each such loop is compiled with the
product kernels for every layer, whatever its activation: the vectorized float32 GELU, ELU,
SELU and softplus loops added 2.5 s to the 26 s cold compile of a float32 ReLU layer.  Here
each activation's two passes are kernels of their own.  The Python side
(``fastdense.activations.Activation.prepare``, :func:`install`) compiles them for a dtype (or
loads them from Numba's cache) and writes their addresses into :data:`TABLE`, which the
product kernels read (:func:`pass_address`) and call (:func:`call_values_pass`,
:func:`call_derivative_pass`).  The product kernels hold no loop of the activation formulas of
their own, so a ReLU layer compiles none of them.  The layer kernels refuse an activation
whose passes are not installed (:func:`require_passes`).

The table is the only state here: the addresses of compiled code, written once per process and
activation, never freed (Numba keeps the code loaded).
"""

from __future__ import annotations

import ctypes
import functools

import numba
import numpy as np
from llvmlite import binding as llvm
from numba import types
from numba.extending import intrinsic, overload, register_jitable

from fastdense.kernels import activation as act
from fastdense.kernels._codegen import compiled_address, kernel

#: The two passes of an activation.
VALUES = 0
DERIVATIVE = 1

#: Activation codes the table has room for (``activation.SOFTPLUS`` is the last).
CODES = 16

#: Addresses of the compiled passes, by pass, dtype (float32, float64) and activation code; 0
#: where none is compiled.
TABLE = (ctypes.c_int64 * (2 * 2 * CODES))()

# Jitted code reads the table through this symbol: cached machine code refers to it by name,
# which resolves in any process that imported this module.
_SYMBOL = "fastdense.activation_passes"
llvm.add_symbol(_SYMBOL, ctypes.addressof(TABLE))


@register_jitable
def table_index(kind: int, itemsize: int, code: int) -> int:
    """The entry of pass ``kind`` (:data:`VALUES` or :data:`DERIVATIVE`) of activation
    ``code`` for the float dtype of ``itemsize`` bytes (from Python and from kernels)."""
    return (kind * 2 + (1 if itemsize == 8 else 0)) * CODES + code


@intrinsic
def _table_entry(typingctx, index):
    """``TABLE[index]`` (no bounds check: see :func:`pass_address`)."""
    if not isinstance(index, types.Integer):
        return None
    sig = types.int64(index)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        module = builder.module
        table = module.globals.get(_SYMBOL)
        if table is None:
            table = ir.GlobalVariable(module, ir.ArrayType(ir.IntType(64), len(TABLE)),
                                      _SYMBOL)
            table.linkage = "external"
        i = context.cast(builder, args[0], signature.args[0], types.int64)
        entry = builder.gep(table, [ir.Constant(ir.IntType(32), 0), i], inbounds=True)
        return builder.load(entry)

    return sig, codegen


@register_jitable
def pass_address(kind, a, code):
    """The address of pass ``kind`` of activation ``code`` for ``a``'s dtype, or 0."""
    if code < 0 or code >= CODES:
        return 0
    return _table_entry(table_index(kind, a.itemsize, code))


#: The error of a layer kernel given an activation whose passes are not installed.
NOT_INSTALLED = ("no compiled passes for this activation and dtype: call "
                 "fastdense.kernels.activation_passes.install(code, dtype) first (layers and "
                 "fastdense.linear do)")


@register_jitable
def require_passes(code, a):
    """Raise ``ValueError`` unless activation ``code`` is applied by the micro-kernels (the
    identity, ReLU) or by a softmax pass, or has both of its passes installed for ``a``'s
    dtype.  The layer kernels call it before they write anything: the product kernels
    themselves, which cannot raise from their threads, write NaN where a pass is missing."""
    if code == act.LINEAR or code == act.RELU or code == act.SOFTMAX:
        return
    if pass_address(VALUES, a, code) == 0 or pass_address(DERIVATIVE, a, code) == 0:
        raise ValueError(NOT_INSTALLED)


def _c_2d(t):
    return isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C"


def _call(context, builder, address, argtys, fromtys, args):
    """Call the compiled kernel at ``address`` whose signature is ``argtys`` (Numba's calling
    convention), with ``args`` of types ``fromtys``."""
    values = [context.cast(builder, v, f, t) for v, f, t in zip(args, fromtys, argtys, strict=True)]
    fnty = context.call_conv.get_function_type(types.none, argtys)
    fn = builder.inttoptr(address, fnty.as_pointer())
    # The passes raise nothing (compiled without bounds checks or errors to report).
    context.call_conv.call_function(builder, fn, types.none, argtys, values)


def values_signature(dtype) -> tuple:
    """The argument types of a values pass for the Numba float type ``dtype``."""
    return (types.Array(dtype, 2, "C"),) + (types.int64,) * 4


def derivative_signature(dtype) -> tuple:
    """The argument types of a derivative pass for the Numba float type ``dtype``."""
    a = types.Array(dtype, 2, "C")
    return (a, a, a) + (types.int64,) * 4 + (a,) + (types.int64,) * 2


@intrinsic
def call_values_pass(typingctx, address, y, i0, rows, j0, ncols):
    """Call the values pass at ``address`` on ``y[i0:i0 + rows, j0:j0 + ncols]``."""
    if not _c_2d(y):
        return None
    sig = types.none(address, y, i0, rows, j0, ncols)

    def codegen(context, builder, signature, args):
        argtys = values_signature(y.dtype)
        _call(context, builder, args[0], argtys, signature.args[1:], args[1:])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def call_derivative_pass(typingctx, address, g, z, y, i0, mr, p0, kc, dz, di, dp):
    """Call the derivative pass at ``address`` with ``pack.dz_rows``' arguments (but the
    code)."""
    if not all(_c_2d(t) and t.dtype == g.dtype for t in (g, z, y, dz)):
        return None
    sig = types.none(address, g, z, y, i0, mr, p0, kc, dz, di, dp)

    def codegen(context, builder, signature, args):
        argtys = derivative_signature(g.dtype)
        _call(context, builder, args[0], argtys, signature.args[1:], args[1:])
        return context.get_dummy_value()

    return sig, codegen


# What each activation's passes compute per element, by code (the implementations of
# :func:`_value` and :func:`_derivative`, whose first argument is that code).
_VALUES = {
    act.SIGMOID: lambda code, z: act.sigmoid(z),
    act.TANH: lambda code, z: act.tanh(z),
    act.GELU: lambda code, z: act.gelu(z),
    act.LEAKY_RELU: lambda code, z: act.leaky_relu(z),
    act.ELU: lambda code, z: act.elu(z),
    act.SELU: lambda code, z: act.selu(z),
    act.SWISH: lambda code, z: act.swish(z),
    act.SOFTPLUS: lambda code, z: act.softplus(z),
}
_DERIVATIVES = {
    act.SIGMOID: lambda code, z, y: act.sigmoid_derivative(y),
    act.TANH: lambda code, z, y: act.tanh_derivative(y),
    act.GELU: lambda code, z, y: act.gelu_derivative(z),
    act.LEAKY_RELU: lambda code, z, y: act.leaky_relu_derivative(z),
    act.ELU: lambda code, z, y: act.elu_derivative(z),
    act.SELU: lambda code, z, y: act.selu_derivative(z),
    act.SWISH: lambda code, z, y: act.swish_derivative(z),
    act.SOFTPLUS: lambda code, z, y: act.sigmoid(z),
}

#: The activations that have passes (the others: ReLU and the identity are applied by the
#: micro-kernels, softmax by a pass over whole rows).
CODES_WITH_PASSES = frozenset(_VALUES)


def _value(code, z):
    """``act(z)`` for the constant ``code`` (typed for that activation alone)."""


@overload(_value, inline="always")
def _value_ol(code, z):
    if isinstance(code, types.IntegerLiteral):
        return _VALUES[code.literal_value]
    return None


def _derivative(code, z, y):
    """``act'(z)`` (from ``z`` and ``y = act(z)``) for the constant ``code``."""


@overload(_derivative, inline="always")
def _derivative_ol(code, z, y):
    if isinstance(code, types.IntegerLiteral):
        return _DERIVATIVES[code.literal_value]
    return None


@functools.cache
def values_pass(code: int):
    """The values pass of activation ``code``: ``y[i0:i0 + rows, j0:j0 + ncols] =
    act(y[...])`` in place (a kernel; its constant ``code`` is part of Numba's cache key).

    In place, one array: a loop from one array into another vectorizes behind a runtime check
    that the two do not overlap, which fails when they are the same."""

    @kernel(nrt=False, error_model="numpy")
    def values(y, i0, rows, j0, ncols):
        for i in range(i0, i0 + rows):
            yr = y[i, j0:j0 + ncols]
            for j in range(ncols):
                yr[j] = _value(code, yr[j])

    return values


@functools.cache
def derivative_pass(code: int):
    """The derivative pass of activation ``code``, as ``pack.dz_rows`` (but the code):
    ``dz[di + i - i0, dp + p - p0] = g[i, p] * act'(z[i, p], y[i, p])`` for ``i0 <= i <
    i0 + mr`` and ``p0 <= p < p0 + kc``."""

    @kernel(nrt=False, error_model="numpy")
    def derivative(g, z, y, i0, mr, p0, kc, dz, di, dp):
        for i in range(i0, i0 + mr):
            gi = g[i, p0:p0 + kc]
            zi = z[i, p0:p0 + kc]
            yi = y[i, p0:p0 + kc]
            dzi = dz[di + i - i0, dp:dp + kc]
            for p in range(kc):
                dzi[p] = gi[p] * _derivative(code, zi[p], yi[p])

    return derivative


_PASSES = ((VALUES, values_pass, values_signature),
           (DERIVATIVE, derivative_pass, derivative_signature))


def install(code: int, dtype: np.dtype) -> None:
    """Compile activation ``code``'s passes for ``dtype`` (or load them from Numba's cache)
    and enter their addresses in :data:`TABLE`; nothing for an activation without passes or a
    dtype other than float32 and float64.  Idempotent."""
    dtype = np.dtype(dtype)
    if code not in CODES_WITH_PASSES or dtype not in (np.float32, np.float64):
        return
    for kind, make, signature in _PASSES:
        index = table_index(kind, dtype.itemsize, code)
        if TABLE[index]:
            continue
        disp = make(code)
        sig = signature(numba.from_dtype(dtype))
        disp.compile(sig)
        TABLE[index] = compiled_address(disp, sig)
