"""Compile settings for fastdense's kernels, applied to our functions only.

The register-tile micro-kernels (:mod:`fastdense.kernels._microkernels`) reach ~96% of peak only
when (1) LLVM's SLP vectorizer runs and (2) the vectorizer may use 512-bit vectors.  Numba turns
SLP off by default (``numba.config.SLP_VECTORIZE``) and LLVM's cost model for several AVX-512
CPUs prefers 256-bit vectors.  Both are process-wide knobs in Numba, and flipping them globally
(``NUMBA_SLP_VECTORIZE=1`` / ``NUMBA_CPU_FEATURES=...,-prefer-256-bit``) would change how the
*user's* own Numba code compiles, and the CPU-feature string is even part of Numba's cache key,
so it would invalidate every cached function of theirs.  Instead:

* SLP: Numba reads ``config.SLP_VECTORIZE`` each time it builds an LLVM pass pipeline, i.e. while
  a dispatcher compiles.  :func:`kernel` wraps each of our dispatchers' ``compile`` so the flag is
  set only while *our* functions compile (or load from cache), under Numba's global compiler
  lock so no other thread's compilation can observe it, and restored afterwards.
* Vector width: ``"prefer-vector-width"="512"`` is a per-function LLVM attribute.
  :func:`wide_vectors` is an intrinsic that emits no code and only adds that attribute to the
  function calling it, so just the micro-kernels are vectorized 512 bits wide; the target
  machine, Numba's cache key and everybody else's code are untouched.

Fastmath is limited to ``contract`` (FMA formation): ``nnan``/``ninf`` would let LLVM drop the
NaN/Inf propagation the layer promises, and reassociation would make sums depend on the
vectorization, so results are reproducible bit for bit.
"""

from __future__ import annotations

import functools

import numba
from numba import njit, types
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import intrinsic

FASTMATH = frozenset({"contract"})


def _with_slp(compile_fn):
    @functools.wraps(compile_fn)
    def compile_with_slp(sig):
        # Calls from jitted code pass constants as literal types (``Literal[bool](False)``,
        # ``Literal[int](1)``), which would compile one copy of a kernel per constant; the flags
        # are meant as runtime arguments, so compile the plain types (the callers' literal
        # arguments convert to them), keeping one specialization per dtype.
        if isinstance(sig, tuple):
            sig = tuple(types.unliteral(t) for t in sig)
        with global_compiler_lock:
            previous = numba.config.SLP_VECTORIZE
            numba.config.SLP_VECTORIZE = 1
            try:
                return compile_fn(sig)
            finally:
                numba.config.SLP_VECTORIZE = previous

    return compile_with_slp


def kernel(fn=None, *, parallel=False, inline="never"):
    """``njit(cache=True, fastmath={'contract'})`` compiled with SLP vectorization on.

    Parameters
    ----------
    fn : callable
        The Python function to compile.
    parallel : bool
        Passed to :func:`numba.njit` (``prange`` support).
    inline : str
        Passed to :func:`numba.njit`.
    """
    if fn is None:
        return functools.partial(kernel, parallel=parallel, inline=inline)
    disp = njit(cache=True, fastmath=set(FASTMATH), parallel=parallel, inline=inline)(fn)
    # ``compile`` is the single entry both for calls from Python (``_compile_for_args``) and
    # for calls from other jitted functions (typing resolves callees through it).
    disp.compile = _with_slp(disp.compile)
    return disp


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorize the calling function with 512-bit vectors (no code emitted)."""
    sig = types.none()

    def codegen(context, builder, signature, args):
        attrs = builder.function.attributes
        # llvmlite's AttributeSet only validates names in ``add``; string attributes are
        # rendered verbatim into the ``define`` line, which is what LLVM expects.
        set.add(attrs, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return sig, codegen
