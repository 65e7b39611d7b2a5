"""fastdense vs idiomatic NumPy (and PyTorch) on GEMM, forward, backprop and training step.

One pytest-benchmark group per operation, dtype and shape (``Case.group``), one test per
implementation in it.  Each test first checks its implementation against float64 NumPy, so a
wrong kernel fails instead of being timed.
"""

from __future__ import annotations

import pytest

from fastdense.bench import agreement, cases, timing, workloads

QUICK = set(cases.quick_grid())
# pedantic() has no calibration of its own: aim for about this many seconds per test.
PEDANTIC_SECONDS = 0.5
PEDANTIC_ROUNDS = (5, 2000)


def _params() -> list:
    params = []
    for case in cases.full_grid():
        for impl in workloads.IMPLEMENTATIONS:
            marks = [pytest.mark.quick] if case in QUICK else []
            if impl == "torch":
                marks += [pytest.mark.torch,
                          pytest.mark.skipif(not workloads.torch_available(),
                                             reason="PyTorch is not installed")]
            params.append(pytest.param(case, impl, id=f"{case.group}-{impl}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "impl"), _params())
def test_bench(benchmark, case: cases.Case, impl: str) -> None:
    inputs = workloads.make_inputs(case)
    work = workloads.build(case, impl, inputs)
    agreement.check(case, impl, inputs, work.result())
    benchmark.group = case.group
    benchmark.extra_info.update(op=case.op, dtype=case.dtype, shape=case.shape.id,
                                flops=case.flops, impl=impl)
    timed = work.timed
    # The previous test's thread pool may still spin (OpenBLAS for ~0.1 s): let it stop.
    timing.wait_until_idle()
    per_call = timing.warm_up(timed, min_calls=3, min_time=0.05)
    if timed.before_call is None and timed.before_block is None:
        benchmark(timed.call)
        return
    # Training work mutates the weights: restore them (and redo the forward a backprop
    # needs) before every timed call, outside the timing, so each call does the same work.
    def setup() -> None:
        if timed.before_block is not None:
            timed.before_block()
        if timed.before_call is not None:
            timed.before_call()

    low, high = PEDANTIC_ROUNDS
    rounds = max(low, min(high, int(PEDANTIC_SECONDS / max(per_call, 1e-9))))
    benchmark.pedantic(timed.call, setup=setup, rounds=rounds, iterations=1)
