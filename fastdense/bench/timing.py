"""Timing loops: warm up, calibrate, then time implementations in alternating blocks.

Why blocks and not single calls in turn: fastdense runs on Numba's OpenMP pool and NumPy on
OpenBLAS's pthread pool.  Each pool keeps its threads spinning for a while after a call, so
interleaving calls one by one makes every call compete with the other library's spinning
threads and penalises whichever runs second.  Running a block of consecutive calls per
implementation, and alternating whole blocks (rotating which goes first), exposes every
implementation to the same machine state.  Before each block the loop also waits until the
process is idle (:func:`wait_until_idle`): measured on a 2-core machine, OpenBLAS's worker
keeps a core busy for 100-150 ms after NumPy returns (Numba's OpenMP workers for about
10 ms), which would otherwise land in the next implementation's block.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass(frozen=True)
class Timed:
    """One implementation's work, as the timing loops see it.

    Parameters
    ----------
    call : callable
        The work to time, called with no argument.
    before_call : callable, optional
        Untimed preparation before every call (e.g. the forward pass that a backprop needs).
    before_block : callable, optional
        Untimed preparation before every block (e.g. restoring the initial weights so every
        block of every implementation does the same work).
    """

    call: Callable[[], object]
    before_call: Callable[[], object] | None = None
    before_block: Callable[[], object] | None = None


@dataclass
class Timing:
    """Per-call times of one implementation, one figure per block.

    Attributes
    ----------
    number : int
        Calls per block.
    block_times : list of float
        Seconds per call, averaged over each block's calls.
    """

    number: int
    block_times: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        """Fastest block's seconds per call: the least disturbed estimate."""
        return min(self.block_times)

    @property
    def median(self) -> float:
        """Median block's seconds per call: what a typical run sees."""
        return statistics.median(self.block_times)


def run_block(timed: Timed, number: int, clock: Clock = time.perf_counter) -> float:
    """Run ``number`` calls of ``timed`` and return the mean seconds per call.

    Parameters
    ----------
    timed : Timed
        The work; its ``before_block`` runs first and ``before_call`` before each call, both
        outside the timed span.
    number : int
        Calls in the block (at least 1).
    clock : callable
        Monotonic clock in seconds.

    Returns
    -------
    float
        Seconds per call.
    """
    if number < 1:
        raise ValueError(f"a block needs at least one call, got {number}")
    if timed.before_block is not None:
        timed.before_block()
    call = timed.call
    if timed.before_call is None:
        start = clock()
        for _ in range(number):
            call()
        return (clock() - start) / number
    prepare = timed.before_call
    total = 0.0
    for _ in range(number):
        prepare()
        start = clock()
        call()
        total += clock() - start
    return total / number


def calls_per_block(per_call: float, target: float, max_number: int) -> int:
    """How many calls make a block of about ``target`` seconds.

    Parameters
    ----------
    per_call : float
        Estimated seconds per call.
    target : float
        Wanted block duration in seconds.
    max_number : int
        Upper bound, so that a mis-estimate of a very fast call cannot run away.

    Returns
    -------
    int
        Between 1 and ``max_number``.
    """
    if per_call <= 0 or not math.isfinite(per_call):
        return max_number
    return max(1, min(max_number, round(target / per_call)))


def warm_up(timed: Timed, min_calls: int, min_time: float,
            clock: Clock = time.perf_counter) -> float:
    """Call ``timed`` until both ``min_calls`` calls and ``min_time`` seconds are done.

    At least one call runs, since it also gives the estimate that sizes the blocks.
    Warm-up fills caches, lets the thread pools start and (for fastdense) triggers any
    pending JIT compilation, so none of it lands in a timed block.

    Returns
    -------
    float
        The fastest warm-up call in seconds: the estimate used to size the blocks.
    """
    best = math.inf
    calls = 0
    start = clock()
    if timed.before_block is not None:
        timed.before_block()
    while calls < max(1, min_calls) or clock() - start < min_time:
        best = min(best, run_block(Timed(timed.call, timed.before_call), 1, clock))
        calls += 1
    return best


def wait_until_idle(max_wait: float = 0.5, interval: float = 0.01, busy: float = 0.2,
                    clock: Clock = time.perf_counter, cpu_clock: Clock = time.process_time,
                    sleep: Callable[[float], object] = time.sleep) -> float:
    """Sleep until this process's threads stop spinning, at most ``max_wait`` seconds.

    The process counts as idle once it uses less than ``busy`` cores of CPU time over an
    ``interval`` of sleep: the thread pools of the previous block have gone to sleep.  Only
    this process's CPU time is measured, so other processes on the machine do not delay it.

    Returns
    -------
    float
        Seconds waited.
    """
    start = clock()
    while True:
        t0, c0 = clock(), cpu_clock()
        sleep(interval)
        t1, c1 = clock(), cpu_clock()
        if (c1 - c0) < busy * max(t1 - t0, 1e-9) or t1 - start >= max_wait:
            return t1 - start


def time_alternating(
    timeds: Mapping[str, Timed],
    blocks: int,
    block_time: float,
    *,
    warmup_calls: int = 2,
    warmup_time: float = 0.0,
    max_number: int = 100_000,
    clock: Clock = time.perf_counter,
    on_block: Callable[[str], object] | None = None,
    settle: Callable[[], object] | None = wait_until_idle,
) -> dict[str, Timing]:
    """Time several implementations of the same work in alternating blocks.

    Each implementation is warmed up and its block size chosen so that one block lasts about
    ``block_time`` seconds; then ``blocks`` rounds run one block of each implementation, the
    order rotating from round to round so that none is always first.

    Parameters
    ----------
    timeds : mapping of str to Timed
        Implementations by name, in their base order.
    blocks : int
        Rounds, hence blocks per implementation (at least 1).
    block_time : float
        Target seconds per block.
    warmup_calls, warmup_time : int, float
        Minimum warm-up per implementation.
    max_number : int
        Upper bound on calls per block.
    clock : callable
        Monotonic clock in seconds.
    on_block : callable, optional
        Called with the implementation's name after each timed block (progress reporting).
    settle : callable, optional
        Called, untimed, before each block and each warm-up, to let the thread pools of the
        previous work go idle (default :func:`wait_until_idle`; None to skip).

    Returns
    -------
    dict of str to Timing
        In the order of ``timeds``.
    """
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, got {blocks}")
    names = list(timeds)
    results: dict[str, Timing] = {}
    for name in names:
        if settle is not None:
            settle()
        per_call = warm_up(timeds[name], warmup_calls, warmup_time, clock)
        results[name] = Timing(calls_per_block(per_call, block_time, max_number))
    for round_ in range(blocks):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if settle is not None:
                settle()
            results[name].block_times.append(run_block(timeds[name], results[name].number, clock))
            if on_block is not None:
                on_block(name)
    return results
