"""Run benchmark cases: compile first, check agreement, then time in alternating blocks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fastdense.bench import agreement, workloads
from fastdense.bench.cases import DEFAULT_ACTIVATION, Case, Shape
from fastdense.bench.pinning import pinned_threads
from fastdense.bench.timing import Timed, Timing, time_alternating

REFERENCE = "numpy"
SUBJECT = "fastdense"


@dataclass(frozen=True)
class Settings:
    """How hard to time.

    Attributes
    ----------
    threads : int
        Threads for every implementation.
    blocks : int
        Timed blocks per implementation per case.
    block_time : float
        Target seconds per block.
    warmup_calls, warmup_time : int, float
        Minimum warm-up per implementation per case.
    """

    threads: int
    blocks: int = 7
    block_time: float = 0.1
    warmup_calls: int = 2
    warmup_time: float = 0.02


@dataclass
class CaseResult:
    """Timings and agreement of every implementation on one case."""

    case: Case
    timings: dict[str, Timing]
    agreement: dict[str, float] = field(default_factory=dict)

    def ratio(self, peer: str = REFERENCE) -> float | None:
        """``peer`` best time / fastdense best time (> 1: fastdense is faster)."""
        if peer not in self.timings or SUBJECT not in self.timings:
            return None
        return self.timings[peer].best / self.timings[SUBJECT].best

    def gflops(self, impl: str, stat: str = "best") -> float:
        """GFLOP/s of ``impl`` from its best (or median) time."""
        seconds = getattr(self.timings[impl], stat)
        return self.case.flops / seconds / 1e9


#: The tiny problem whose first call compiles an operation's kernels: units enough for the
#: general kernels, which the grid's layers take, not those of few units
#: (``kernels.dense.is_narrow``: at most 16 units), which even tiny layers now take.
COMPILE_SHAPE = Shape(4, 8, 40)


def compile_kernels(ops: Sequence[str], dtypes: Sequence[str],
                    activation: str = DEFAULT_ACTIVATION,
                    on_step: Callable[[str], object] | None = None) -> dict[str, dict[str, float]]:
    """Trigger fastdense's JIT compilation (or cache load) and time it, per dtype and op, for
    layers of ``activation``.

    Each operation's first call on a tiny problem compiles its kernels; the time of that call
    minus a second, compiled call is the compile (or cache-load) time, kept apart from the
    timings.  ``train_step`` reuses the forward and backprop kernels, so it is timed last.

    Returns
    -------
    dict
        ``{dtype: {op: seconds}}``.
    """
    order = compile_order(ops)
    result: dict[str, dict[str, float]] = {}
    for dtype in dtypes:
        result[dtype] = {}
        for op in order:
            case = Case(op, dtype, COMPILE_SHAPE, activation)
            work = workloads.build(case, SUBJECT, workloads.make_inputs(case)).timed
            first = _one_call(work)
            again = _one_call(work)
            result[dtype][op] = max(0.0, first - again)
            if on_step is not None:
                on_step(f"{op} {dtype}")
    return result


def compile_order(ops: Sequence[str]) -> list[str]:
    """The operations :func:`compile_kernels` calls, in order, for a run of ``ops``."""
    order = [op for op in ("gemm", "forward", "backprop", "train_step") if op in ops]
    if any(op in ops for op in ("backprop", "train_step")) and "forward" not in order:
        # A backprop needs a forward; compile it first so it is not billed to backprop.
        order.insert(1 if "gemm" in order else 0, "forward")
    return order


def _one_call(timed: Timed) -> float:
    if timed.before_block is not None:
        timed.before_block()
    if timed.before_call is not None:
        timed.before_call()
    start = time.perf_counter()
    timed.call()
    return time.perf_counter() - start


def run_case(case: Case, impls: Sequence[str], settings: Settings, seed: int = 0,
             on_block: Callable[[str], object] | None = None) -> CaseResult:
    """Check then time every implementation of ``case``.

    Raises
    ------
    agreement.DisagreementError
        If any implementation's result is wrong; nothing is timed then.
    """
    inputs = workloads.make_inputs(case, seed)
    built = {impl: workloads.build(case, impl, inputs) for impl in impls}
    worst = {}
    with pinned_threads(settings.threads), np.errstate(all="ignore"):
        for impl, work in built.items():
            worst[impl] = agreement.check(case, impl, inputs, work.result())
        timings = time_alternating(
            {impl: work.timed for impl, work in built.items()},
            blocks=settings.blocks,
            block_time=settings.block_time,
            warmup_calls=settings.warmup_calls,
            warmup_time=settings.warmup_time,
            on_block=on_block,
        )
    return CaseResult(case, timings, worst)
