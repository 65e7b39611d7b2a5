"""Compile settings for fastdense's kernels, applied to our functions only.

The register-tile micro-kernels (:mod:`fastdense.kernels._microkernels`) reach ~96% of peak only
when (1) LLVM's SLP vectorizer runs and (2) on AVX-512 CPUs, the vectorizer may use 512-bit
vectors (the AVX2 tiles, :mod:`fastdense.kernels._tiles`, need only the first).  Numba turns
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

Calls between kernels: Numba links a copy of every callee's code (and of everything the callee
calls) into each caller's module, then optimizes that module and compiles it to machine code, so
a large kernel is compiled again in each caller, once per level of calls: most of a cold
compile.  ``kernel(link=False)`` makes jitted callers call the kernel's own compiled code
through a symbol instead (:func:`_unlink`); its code is then compiled once.

Cache freshness: Numba dates a cached function by its own source file only.  A caller cached
before a callee's module changed would then run its linked copies of the old helpers (a
workspace size, say) against the new code of a kernel it calls by symbol: a mix that no version
of the source computes, which can write out of bounds.  :func:`kernel` (and :func:`dated_njit`
for the functions that take Numba's own options) dates every kernel by the contents of all the
modules of its package instead (:class:`_PackageCache`): any edit there recompiles them all, and
an unchanged package loads from the cache as before.

No fast-math flags at all.  ``nnan``/``ninf`` would let LLVM drop the NaN/Inf propagation the
layer promises, and reassociation would make sums depend on the vectorization.  Even
``contract`` is left out: whether LLVM fuses a contractable multiply and add depends on the
instruction selection of the moment, and we measured the same kernel giving different bits when
freshly compiled and when loaded from Numba's cache (the JIT and the cache's object emission
fuse differently once SLP has vectorized the code).  The products that should be fused say so
with :func:`fma` (``llvm.fma``: one rounding, always), and everything else is rounded operation
by operation, so results are bitwise reproducible from process to process.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import inspect
import pathlib

import numba
from llvmlite import binding as llvm
from numba import njit, types
from numba.core import caching, cgutils, imputils, itanium_mangler, sigutils
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import intrinsic, overload
from numba.np.arrayobj import populate_array

from fastdense.kernels._isa import TILES

FASTMATH: frozenset[str] = frozenset()


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` with a single rounding (``llvm.fma``), in the type of ``a``.

    Explicit, so that the rounding does not depend on whether the backend chooses to contract a
    multiply and an add; the SLP vectorizer turns a row of these into vector FMAs.
    """
    if not all(isinstance(t, types.Float) for t in (a, b, c)):
        return None
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        x, y, z = (context.cast(builder, v, t, a)
                   for v, t in zip(args, signature.args, strict=True))
        return builder.fma(x, y, z)

    return sig, codegen


class _Bind:
    """Makes the symbol of one compiled kernel (:func:`kernel` with ``link=False``) callable.

    Compiling the kernel for ``argtypes`` (or loading it from Numba's cache) registers its
    address under its symbol.  Every library calling it keeps one of these in its
    ``_reload_init``, which Numba runs (and pickles with the cache entry) before loading the
    library's cached machine code: the symbol must be resolvable by then.
    """

    def __init__(self, module, qualname, argtypes):
        self.key = (module, qualname, tuple(argtypes))

    def __eq__(self, other):
        return isinstance(other, _Bind) and self.key == other.key

    def __hash__(self):
        return hash(self.key)

    def __call__(self):
        module, qualname, argtypes = self.key
        getattr(importlib.import_module(module), qualname).compile(argtypes)

    def __reduce__(self):
        return _load_bind, self.key


def _load_bind(module, qualname, argtypes):
    """Unpickle (and run) a :class:`_Bind` while Numba reads a caller's cache entry.

    A caller cached against another version of the kernel (a renamed kernel, other argument
    types; Numba only checks the caller's own source file) then reads as a missing entry,
    which Numba's cache reports for any ``OSError``: the caller is compiled again, instead of
    failing to load or calling a symbol nobody defines.
    """
    bind = _Bind(module, qualname, argtypes)
    try:
        bind()
    except Exception as exc:
        raise OSError(f"stale cache entry: no {module}.{qualname}{argtypes}") from exc
    return bind


def compiled_address(disp, args) -> int:
    """The address of the machine code of ``disp``'s specialization for ``args`` (compiled or
    loaded from the cache already), called with Numba's calling convention."""
    cres = disp.overloads[args]
    return cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)


# Entry points of the specializations whose calls from jitted code already go by symbol.
_unlinked = set()


def _unlink(disp, args):
    """Make calls from jitted code to ``disp``'s specialization ``args`` go through a symbol
    instead of linking (and optimizing) a copy of its code into the caller."""
    cres = disp.overloads[args]
    if cres.entry_point in _unlinked:
        return
    ctx = disp.targetctx
    if not (hasattr(ctx, "_defns") and hasattr(ctx, "remove_user_function")
            and hasattr(cres.library, "_reload_init")):
        # A Numba without the internals this relies on: callers link the kernel as usual,
        # which only costs compile time.
        return
    module, qualname = disp.py_func.__module__, disp.py_func.__qualname__
    # Stable across processes (no compile counter, unlike Numba's own symbol names), so cached
    # callers find whichever compiled copy is loaded; the prefix keeps it apart from those.
    symbol = "fastdense." + itanium_mangler.mangle(f"{module}.{qualname}", args)
    llvm.add_symbol(symbol, compiled_address(disp, args))
    stub = copy.copy(cres.fndesc)
    stub.mangled_name = symbol
    call = imputils.user_function(stub, ())
    bind = _Bind(module, qualname, args)

    def call_unlinked(context, builder, sig, argvals):
        context.active_code_library._reload_init.add(bind)
        return call(context, builder, sig, argvals)

    call_unlinked.signature = call.signature
    call_unlinked.libs = ()
    # Replaces the implementation Numba registered for calls to this entry point (one that
    # declares Numba's symbol and links the callee's library).
    disp.targetctx.remove_user_function(cres.entry_point)
    disp.targetctx._defns[cres.entry_point].append(call_unlinked, call_unlinked.signature)
    _unlinked.add(cres.entry_point)


def _keep_reload_init(disp, args):
    """Give a specialization loaded from Numba's cache its library's hooks back.

    A library compiled here collects the reload hooks of everything it links (the
    :class:`_Bind` of each kernel it calls by symbol), and a caller compiled later inherits
    them when it links that library.  A library loaded from the cache starts with none: Numba
    keeps them on the compile result only.  A caller compiled in that process then saved a
    cache entry without the binds, which crashed in a later process calling a symbol nobody
    had defined.
    """
    cres = disp.overloads.get(args)
    library = getattr(cres, "library", None)
    hooks = getattr(cres, "reload_init", None)
    if hooks and hasattr(library, "_reload_init"):
        library._reload_init.update(hooks)


def _with_slp(disp, compile_fn, slp=1, link=True):
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
            numba.config.SLP_VECTORIZE = slp
            try:
                entry = compile_fn(sig)
            finally:
                numba.config.SLP_VECTORIZE = previous
            args = sigutils.normalize_signature(sig)[0]
            _keep_reload_init(disp, args)
            if not link:
                _unlink(disp, args)
            return entry

    return compile_with_slp


@functools.cache
def _package_digest(directory: pathlib.Path) -> str:
    """SHA-256 of the names and contents of the Python modules in ``directory``."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class _PackageStamp:
    """A Numba cache locator whose source stamp is its package's digest and the tile set
    (everything else is the wrapped locator's: where the cache lives, whether it is
    writable)."""

    def __init__(self, locator, directory: pathlib.Path):
        self._locator = locator
        self._directory = directory

    def __getattr__(self, name):
        return getattr(self._locator, name)

    def get_source_stamp(self) -> str:
        # The tile set too: the same source compiles to different tiles on another CPU (which
        # Numba's key tells apart) or under FASTDENSE_TILES (which it would not).
        return f"{_package_digest(self._directory)}:{TILES}"


class _PackageCacheImpl(caching.CompileResultCacheImpl):
    def __init__(self, py_func):
        super().__init__(py_func)
        self._locator = _PackageStamp(self._locator, pathlib.Path(inspect.getfile(py_func)).parent)


class _PackageCache(caching.FunctionCache):
    """Numba's cache of compile results, stale as soon as any module beside the function's own
    changed, instead of only its own file (see the module docstring)."""

    _impl_class = _PackageCacheImpl


def dated_njit(**options):
    """``numba.njit(cache=True, **options)`` with the cache dated by the whole package (see the
    module docstring): :func:`kernel`'s base, and used directly by the functions that need
    Numba's own options instead of :func:`kernel`'s settings."""

    def decorate(fn):
        disp = njit(cache=True, **options)(fn)
        _date_by_package(disp)
        return disp

    return decorate


def _date_by_package(disp) -> None:
    """Give ``disp`` a :class:`_PackageCache`; Numba's own cache where the internals this needs
    are missing (another Numba version: stale entries then stay possible after an edit, as for
    any Numba code)."""
    if isinstance(getattr(disp, "_cache", None), caching.FunctionCache):
        disp._cache = _PackageCache(disp.py_func)


def kernel(fn=None, *, parallel=False, inline="never", slp=True, nrt=True, link=True,
           error_model="python"):
    """``njit(cache=True)`` (no fast-math flags) compiled with SLP vectorization on.

    Parameters
    ----------
    fn : callable
        The Python function to compile.
    parallel : bool
        Passed to :func:`numba.njit` (``prange`` support).
    inline : str
        Passed to :func:`numba.njit`.
    slp : bool
        False compiles with SLP *off* (whatever the process-wide setting): for drivers that
        only call other kernels.  Each caller re-optimizes the code of its callees, already
        vectorized when they compiled, and SLP over the large unrolled micro-kernels is a good
        part of the cold-compile time.
    nrt : bool
        False compiles without Numba's reference counting (``_nrt=False``), for kernels that
        allocate nothing: every array slice and every call passing an array otherwise
        increments and decrements the owner's count atomically, which costs more than the
        work of a small tile and, with two threads slicing one array, bounces that count's
        cache line between the cores.
    link : bool
        False makes jitted callers call the compiled kernel through a symbol instead of
        linking a copy of its code (and of everything it calls) into their own module, which
        Numba optimizes and compiles to machine code again, once per caller and per level of
        calls.  For large kernels called from several places: their code is then compiled
        once (cold-compile time).
    error_model : str
        Passed to :func:`numba.njit`: ``"numpy"`` for kernels whose loops divide and must
        vectorize (a Python-style division checks its divisor for zero, a branch that keeps
        the loop scalar).
    """
    if fn is None:
        return functools.partial(kernel, parallel=parallel, inline=inline, slp=slp, nrt=nrt,
                                 link=link, error_model=error_model)
    options = {} if nrt else {"_nrt": False}
    disp = dated_njit(fastmath=set(FASTMATH) or False, parallel=parallel, inline=inline,
                      error_model=error_model, **options)(fn)
    # ``compile`` is the single entry both for calls from Python (``_compile_for_args``) and
    # for calls from other jitted functions (typing resolves callees through it).
    disp.compile = _with_slp(disp, disp.compile, 1 if slp else 0, link)
    return disp


def _vector_width(bits: int):
    """The code of :func:`wide_vectors` and :func:`vectors_256`: the calling function's
    attributes ``prefer-vector-width`` (``bits``) and ``noinline``; no instruction."""

    def codegen(context, builder, signature, args):
        attrs = builder.function.attributes
        # llvmlite's AttributeSet only validates names in ``add``; string attributes are
        # rendered verbatim into the ``define`` line, which is what LLVM expects.
        set.add(attrs, f'"prefer-vector-width"="{bits}"')
        # Never inlined: every caller's module is optimized again with its callees linked in,
        # and a copy of a large unrolled body in each would be optimized again each time.
        attrs.add("noinline")
        return context.get_dummy_value()

    return codegen


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorize the calling function with 512-bit vectors and never inline it (no
    code emitted)."""
    return types.none(), _vector_width(512)


@intrinsic
def vectors_256(typingctx):
    """Let LLVM vectorize the calling function with vectors of at most 256 bits and never
    inline it (no code emitted): for tiles whose rows are one 256-bit vector each, which LLVM
    would otherwise pack two to a 512-bit register, at the cost of a shuffle per FMA."""
    return types.none(), _vector_width(256)


@intrinsic
def prefetch(typingctx, arr, idx):
    """Prefetch the cache line of ``arr[idx]`` (1-D array) for writing, into all cache levels.

    No code but the ``prefetchw`` instruction; an address out of range is harmless (prefetches
    never fault).
    """
    sig = types.none(arr, idx)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


def zero_of(a):
    """``0`` of the dtype of array or float ``a`` (a compile-time constant in kernels)."""


@overload(zero_of, jit_options={"cache": True})
def _zero_of_ol(a):
    zero = a(0) if isinstance(a, types.Float) else a.dtype(0)
    return lambda a: zero


@intrinsic
def fetch_add(typingctx, arr, idx, val):
    """Atomically add ``val`` to the integer whose bits are stored in ``arr[idx]``; return the old.

    ``arr`` is a float array used as a workspace: its element is reinterpreted as an integer of
    the same width (all-zero bits are both ``0.0`` and ``0``), so a float workspace can hold a
    task counter shared by threads.  Sequentially consistent ordering.
    """
    sig = types.int64(arr, idx, val)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        ity = ir.IntType(aryty.dtype.bitwidth)
        iptr = builder.bitcast(ptr, ity.as_pointer())
        v = context.cast(builder, args[2], signature.args[2], types.int64)
        v = builder.trunc(v, ity) if ity.width < 64 else v
        old = builder.atomic_rmw("add", iptr, v, "seq_cst")
        return builder.sext(old, ir.IntType(64)) if ity.width < 64 else old

    return sig, codegen


@intrinsic
def no_inline(typingctx):
    """Keep LLVM from inlining the calling function (no code emitted).

    Numba links every callee's code into each caller's module and optimizes it again there;
    inlined copies of a large kernel at several call sites multiply that work (cold-compile
    time), for no speed: these kernels run long loops per call.
    """
    sig = types.none()

    def codegen(context, builder, signature, args):
        builder.function.attributes.add("noinline")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def float64_bits(typingctx, x):
    """The bits of the float64 ``x`` as an int64 (a reinterpretation: no conversion)."""
    if not (isinstance(x, types.Float) and x.bitwidth == 64):
        return None
    sig = types.int64(x)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def float64_from_bits(typingctx, i):
    """The float64 whose bits are the int64 ``i`` (the inverse of :func:`float64_bits`)."""
    if not (isinstance(i, types.Integer) and i.bitwidth == 64):
        return None
    sig = types.float64(i)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def always_inline(typingctx):
    """Make LLVM inline the calling function wherever it is called (no code emitted).

    For element-wise functions too large for LLVM's own threshold: a loop calling one
    does not vectorize.
    """
    sig = types.none()

    def codegen(context, builder, signature, args):
        builder.function.attributes.add("alwaysinline")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def strided_view(typingctx, a, shape, strides):
    """A view of ``a``'s data from its first element with the given ``shape`` and byte
    ``strides`` (tuples of one length), like ``np.lib.stride_tricks.as_strided``: no checks.

    Usable without reference counting (``kernel(nrt=False)``), where Numba's ``as_strided``
    is not: that is a function returning a new array.
    """
    if (not isinstance(a, types.Array) or not isinstance(shape, types.UniTuple)
            or not isinstance(strides, types.UniTuple) or shape.count != strides.count
            or not isinstance(shape.dtype, types.Integer)
            or not isinstance(strides.dtype, types.Integer)):
        return None
    retty = a.copy(ndim=shape.count, layout="A")
    sig = retty(a, shape, strides)

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        out = context.make_array(signature.return_type)(context, builder)
        dims = [context.cast(builder, v, signature.args[1].dtype, types.intp)
                for v in cgutils.unpack_tuple(builder, args[1])]
        steps = [context.cast(builder, v, signature.args[2].dtype, types.intp)
                 for v in cgutils.unpack_tuple(builder, args[2])]
        populate_array(out, data=src.data, shape=dims, strides=steps, itemsize=src.itemsize,
                       meminfo=src.meminfo)
        return imputils.impl_ret_borrowed(context, builder, signature.return_type,
                                          out._getvalue())

    return sig, codegen


@intrinsic
def copy_n(typingctx, dst, di, src, si, n):
    """``dst[di:di + n] = src[si:si + n]`` (1-D arrays of one dtype) as one ``llvm.memmove``.

    A copy loop between two arrays is vectorized behind a runtime alias check, which costs more
    than the copy for a 32-element panel row; a memmove of constant size is a few vector moves.
    No bounds checks.
    """
    if dst.dtype != src.dtype or dst.layout != "C" or src.layout != "C":
        return None
    sig = types.none(dst, di, src, si, n)

    def codegen(context, builder, signature, args):
        d = context.make_array(signature.args[0])(context, builder, args[0])
        s = context.make_array(signature.args[2])(context, builder, args[2])
        di_, si_, n_ = (context.cast(builder, v, t, types.intp)
                        for v, t in zip((args[1], args[3], args[4]),
                                        (signature.args[1], signature.args[3], signature.args[4]),
                                        strict=True))
        itemsize = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        cgutils.raw_memmove(builder, builder.gep(d.data, [di_]), builder.gep(s.data, [si_]),
                            n_, itemsize)
        return context.get_dummy_value()

    return sig, codegen


def _vector_ptr(context, builder, aryty, ary, idx, n):
    """Pointer to ``<n x dtype>`` at element ``idx`` of the 1-D array ``ary``."""
    from llvmlite import ir

    a = context.make_array(aryty)(context, builder, ary)
    ptr = builder.gep(a.data, [idx])
    vty = ir.VectorType(context.get_data_type(aryty.dtype), n)
    return builder.bitcast(ptr, vty.as_pointer())


def _dst_src(context, builder, signature, args, width):
    """``(dst, src, align)`` of a vector intrinsic whose first four arguments are
    ``dst, di, src, si``: pointers to the two ``<width x dtype>`` vectors, and the alignment
    their loads and stores may assume (the element's)."""
    d = _vector_ptr(context, builder, signature.args[0], args[0], args[1], width)
    s = _vector_ptr(context, builder, signature.args[2], args[2], args[3], width)
    align = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
    return d, s, align


def _relu(builder, v):
    """ReLU of the float vector ``v`` in IR: ``v < 0`` gives zero, anything else (NaN too)
    passes, as :func:`fastdense.kernels.activation.apply`."""
    from llvmlite import ir

    zero = ir.Constant(v.type, None)
    return builder.select(builder.fcmp_ordered("<", v, zero), zero, v)


def _vector_typing(dst, di, src, si, n):
    if (not isinstance(n, types.IntegerLiteral) or dst.dtype != src.dtype
            or dst.layout != "C" or src.layout != "C"):
        return None
    return types.none(dst, di, src, si, n)


@intrinsic
def transpose8(typingctx, dst, di, dstride, src, si, sstride):
    """``dst[di + c * dstride + r] = src[si + r * sstride + c]`` for ``r, c < 8``: an 8 x 8
    block of ``src`` (rows ``sstride`` elements apart) stored transposed into ``dst`` (rows
    ``dstride`` apart), 1-D C arrays of one dtype, as eight vector loads, three stages of
    shuffles and eight vector stores.

    Written as a scalar loop, the block compiles to one scalar load and one scalar store per
    element (checked with ``inspect_asm``): LLVM's vectorizers do not form transposes.  No
    bounds checks.
    """
    if dst.dtype != src.dtype or dst.layout != "C" or src.layout != "C":
        return None
    sig = types.none(dst, di, dstride, src, si, sstride)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        d = context.make_array(signature.args[0])(context, builder, args[0])
        s = context.make_array(signature.args[3])(context, builder, args[3])
        di_, dstride_, si_, sstride_ = (
            context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2, 4, 5))
        vty = ir.VectorType(context.get_data_type(signature.args[0].dtype), 8)
        align = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        intp = context.get_value_type(types.intp)

        def at(data, base, stride, i):
            idx = builder.add(base, builder.mul(stride, ir.Constant(intp, i)))
            return builder.bitcast(builder.gep(data, [idx]), vty.as_pointer())

        rows = [builder.load(at(s.data, si_, sstride_, r), align=align) for r in range(8)]
        # Swap the off-diagonal b x b blocks of every 2b x 2b block, for b = 4, 2, 1.
        for b in (4, 2, 1):
            lo = ir.Constant(ir.VectorType(ir.IntType(32), 8),
                             [j if (j // b) % 2 == 0 else j - b + 8 for j in range(8)])
            hi = ir.Constant(ir.VectorType(ir.IntType(32), 8),
                             [j + b if (j // b) % 2 == 0 else j + 8 for j in range(8)])
            for i in range(8):
                if (i // b) % 2 == 0:
                    u, v = rows[i], rows[i + b]
                    rows[i] = builder.shuffle_vector(u, v, lo)
                    rows[i + b] = builder.shuffle_vector(u, v, hi)
        for c in range(8):
            builder.store(rows[c], at(d.data, di_, dstride_, c), align=align)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def add_n(typingctx, dst, di, src, si, n):
    """``dst[di:di + n] += src[si:si + n]`` (1-D C arrays of one dtype, ``n`` a literal) as
    vector IR: one rounded add per element, the bits of the scalar loop.

    Such a short loop with a constant trip count is unrolled by LLVM before its loop
    vectorizer runs, and the SLP vectorizer cannot prove the two arrays apart, so it would
    run as ``n`` scalar adds.  No bounds checks.
    """
    sig = _vector_typing(dst, di, src, si, n)
    if sig is None:
        return None
    width = n.literal_value

    def codegen(context, builder, signature, args):
        d, s, align = _dst_src(context, builder, signature, args, width)
        value = builder.fadd(builder.load(d, align=align), builder.load(s, align=align))
        builder.store(value, d, align=align)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def relu_n(typingctx, dst, di, src, si, n):
    """``dst[di:di + n] = relu(src[si:si + n])`` as vector IR (``n`` a literal; see
    :func:`_relu`).  No bounds checks."""
    sig = _vector_typing(dst, di, src, si, n)
    if sig is None:
        return None
    width = n.literal_value

    def codegen(context, builder, signature, args):
        d, s, align = _dst_src(context, builder, signature, args, width)
        builder.store(_relu(builder, builder.load(s, align=align)), d, align=align)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def sgd_n(typingctx, dst, di, src, si, lr, n):
    """``dst[di:di + n] -= lr * src[si:si + n]`` as vector IR (``n`` a literal, ``lr`` a float64).

    The arithmetic of the scalar loop exactly: ``lr * src`` and the subtraction each rounded in
    float64, then rounded to ``dst``'s dtype (float32 data is widened first).
    No bounds checks.
    """
    sig = _vector_typing(dst, di, src, si, n)
    if sig is None or lr != types.float64:
        return None
    sig = types.none(dst, di, src, si, lr, n)
    width = n.literal_value

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        d, s, align = _dst_src(context, builder, signature, args, width)
        wide = ir.VectorType(ir.DoubleType(), width)
        dv = builder.load(d, align=align)
        sv = builder.load(s, align=align)
        if dv.type != wide:
            dv = builder.fpext(dv, wide)
            sv = builder.fpext(sv, wide)
        rate = builder.insert_element(ir.Constant(wide, None), args[4], ir.IntType(32)(0))
        rate = builder.shuffle_vector(rate, rate, ir.Constant(ir.VectorType(ir.IntType(32),
                                                                         width), None))
        value = builder.fsub(dv, builder.fmul(rate, sv))
        if value.type != d.type.pointee:
            value = builder.fptrunc(value, d.type.pointee)
        builder.store(value, d, align=align)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def bias_act_n(typingctx, dst, di, src, si, bias, bi, relu, n):
    """``dst[di:di + n] = act(src[si:si + n] + bias[bi:bi + n])`` as vector IR (``n`` a
    literal), ``act`` being ReLU when ``relu`` (as :func:`relu_n`) and the identity otherwise:
    the forward pass's store in one pass.  No bounds checks."""
    sig = _vector_typing(dst, di, src, si, n)
    if (sig is None or bias.dtype != dst.dtype or bias.layout != "C"
            or not isinstance(relu, types.Boolean)):
        return None
    sig = types.none(dst, di, src, si, bias, bi, relu, n)
    width = n.literal_value

    def codegen(context, builder, signature, args):
        d, s, align = _dst_src(context, builder, signature, args, width)
        b = _vector_ptr(context, builder, signature.args[4], args[4], args[5], width)
        v = builder.fadd(builder.load(s, align=align), builder.load(b, align=align))
        builder.store(builder.select(args[6], _relu(builder, v), v), d, align=align)
        return context.get_dummy_value()

    return sig, codegen
