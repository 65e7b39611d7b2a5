"""Keeping a parallel region's worker threads off the CPU of the thread that started it.

Measured on a 2-vCPU KVM guest: after about 0.1 s with nothing to do, the first parallel call
often woke its OpenMP worker on the caller's own vCPU (``sched_getcpu`` inside the slow calls
found both threads there; probably the guest kernel avoids waking a thread onto a vCPU that the
host has descheduled).  The caller then finished its share and spun in libgomp's end-of-region
barrier for several ms before the worker could run, and the next call did the same: 6 to 12 ms
in all for a call that takes 20 µs warm (``tools/idle_latency.py``).  ``OMP_PROC_BIND=true``
prevents it by pinning every thread, the caller included, which a library must not impose.

Instead each worker of our main parallel regions checks in at the start of its share
(:func:`worker_arrives`; :func:`region_opens` zeroes the count before the region).  A worker
that finds itself on the caller's CPU leaves it: it takes that CPU out of its own affinity
mask, which migrates it at once, and puts it back, so it is not pinned anywhere.  The
caller, once done with its share, yields its CPU until every worker has checked in
(:func:`caller_waits`), so a worker queued behind it gets to run and move.  Warm,
this costs each thread one ``sched_getcpu`` per region (no system call on x86-64 glibc: vDSO
or rseq), and the workers have usually checked in long before the caller looks.

Linux only (glibc's ``sched_getcpu``, ``sched_yield``, ``sched_[gs]etaffinity``); elsewhere
the intrinsics compile to nothing and the regions behave as before.

How long the workers spin after a region (:func:`shorten_spin`).  libgomp's workers wait for
the next region spinning on the CPU, by default 300000 rounds (about 6 ms here) before they
sleep.  A user's loop that alternates fastdense calls with NumPy products then stalls both:
each OpenBLAS call waits for a CPU that our spinning worker holds, and OpenBLAS's workers spin
in turn (about 0.1 s, yielding).  Float32, two threads, a loop of a forward 32 x 784->512 then
a NumPy 256 x 256 product: 3.77 ms and 4.22 ms per call (0.12 and 0.19 alone).  With
GOMP_SPINCOUNT rounds of 1000 / 2000 / 5000 / 10000 / 30000 (medians, µs): that loop 139 and
198 / 138 and 224 / 143 and 295 / 143 and 416 / 156 and 905; a forward after 20 µs of other
work 136 / 122-128 / 121 / 121 / 121 (121 at the default), after 200 µs 146 / 145 / 145 / 123
/ 123; back to back, and a ``Sequential.fit`` on the digits, unchanged.
"""

import os
import sys
from collections.abc import MutableMapping

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.ufunc import parallel
from numba.np.ufunc.parallel import _iget_thread_id

from fastdense.kernels._codegen import fetch_add, kernel

_LINUX = sys.platform.startswith("linux")
# ``cpu_set_t`` of glibc: 1024 CPUs, 16 words.
_MASK_WORDS = 16
# The caller yields at most this many times waiting for its workers (a few ms when nothing
# else wants its CPU): a bound, so that a worker that never checks in cannot hang the caller.
MAX_YIELDS = 20000

#: Rounds libgomp's workers spin after a region before they sleep, about 40 µs here: a
#: fastdense call that follows within that finds them awake, a NumPy product waits at most that.
SPIN_COUNT = 2000

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_I8P = ir.IntType(8).as_pointer()


def _libc(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


@intrinsic
def current_cpu(typingctx):
    """The CPU the calling thread runs on (``sched_getcpu``), -1 where unknown."""

    def codegen(context, builder, signature, args):
        if not _LINUX:
            return _I64(-1)
        cpu = builder.call(_libc(builder, "sched_getcpu", _I32, []), [])
        return builder.sext(cpu, _I64)

    return types.int64(), codegen


@intrinsic
def yield_cpu(typingctx):
    """Let another thread waiting for this CPU run (``sched_yield``)."""

    def codegen(context, builder, signature, args):
        if _LINUX:
            builder.call(_libc(builder, "sched_yield", _I32, []), [])
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def leave_cpu(typingctx, cpu):
    """Migrate the calling thread off CPU ``cpu`` and leave its affinity as it was.

    Returns 1 if it moved, 0 if it could not (``cpu`` not in its mask, the only CPU of its
    mask, out of range, or no such call on this platform).
    """

    def codegen(context, builder, signature, args):
        moved = cgutils.alloca_once_value(builder, _I64(0))
        if not _LINUX:
            return builder.load(moved)
        c = context.cast(builder, args[0], signature.args[0], types.int64)
        getaff = _libc(builder, "sched_getaffinity", _I32, [_I32, _I64, _I8P])
        setaff = _libc(builder, "sched_setaffinity", _I32, [_I32, _I64, _I8P])
        mask = cgutils.alloca_once(builder, ir.ArrayType(_I64, _MASK_WORDS))
        raw = builder.bitcast(mask, _I8P)
        size = _I64(8 * _MASK_WORDS)
        in_range = builder.and_(builder.icmp_signed(">=", c, _I64(0)),
                                builder.icmp_signed("<", c, _I64(64 * _MASK_WORDS)))
        with builder.if_then(in_range):
            # pid 0: the calling thread.
            got = builder.call(getaff, [_I32(0), size, raw])
            with builder.if_then(builder.icmp_signed("==", got, _I32(0))):
                word = builder.gep(mask, [_I32(0), builder.lshr(c, _I64(6))])
                bit = builder.shl(_I64(1), builder.and_(c, _I64(63)))
                old = builder.load(word)
                builder.store(builder.and_(old, builder.not_(bit)), word)
                others = _I64(0)
                for i in range(_MASK_WORDS):
                    w_i = builder.load(builder.gep(mask, [_I32(0), _I32(i)]))
                    others = builder.or_(others, w_i)
                has_bit = builder.icmp_unsigned("!=", builder.and_(old, bit), _I64(0))
                can = builder.and_(has_bit, builder.icmp_unsigned("!=", others, _I64(0)))
                with builder.if_then(can):
                    # Moves the thread now; then the old mask again, so it is not pinned.
                    builder.call(setaff, [_I32(0), size, raw])
                    builder.store(old, word)
                    builder.call(setaff, [_I32(0), size, raw])
                    builder.store(_I64(1), moved)
        return builder.load(moved)

    return types.int64(cpu), codegen


@kernel(nrt=False, inline="always")
def region_opens(ctr, slot):
    """Before a parallel region, in the caller: zero the check-in count ``ctr[slot]`` and
    return the caller's CPU, for :func:`worker_arrives`."""
    ctr[slot] = 0
    return current_cpu()


@kernel(nrt=False, inline="always")
def worker_arrives(ctr, slot, caller_cpu):
    """At the start of a thread's share of a parallel region: a worker (not the caller, thread
    0) moves off the caller's CPU ``caller_cpu`` if it is on it, then counts itself in
    ``ctr[slot]`` (zeroed before the region)."""
    if _iget_thread_id() != 0:
        if current_cpu() == caller_cpu:
            leave_cpu(caller_cpu)
        fetch_add(ctr, slot, 1)


@kernel(nrt=False, inline="always")
def caller_waits(ctr, slot, nthreads):
    """At the end of the caller's share: yield its CPU until the ``nthreads - 1`` workers have
    checked in (at most ``MAX_YIELDS`` times)."""
    if _iget_thread_id() == 0:
        for _ in range(MAX_YIELDS):
            if fetch_add(ctr, slot, 0) >= nthreads - 1:
                break
            yield_cpu()


def shorten_spin(environ: MutableMapping[str, str] = os.environ,
                 started: bool | None = None) -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` unless the user chose how OpenMP threads
    wait (``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` set) or Numba's threads have ``started``
    (by default: whether they have), libgomp being loaded then.

    libgomp reads it when it is loaded, so this must run before Numba starts its OpenMP
    threads; it also applies to the user's own Numba parallel code and to any libgomp loaded
    later.  Returns whether it set the variable.
    """
    if started is None:
        started = parallel._is_initialized
    if started or "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ:
        return False
    environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True
