"""The compared implementations do the same work from the same state."""

from __future__ import annotations

import numpy as np
import pytest

from fastdense.bench import cases, workloads

SHAPE = cases.Shape(8, 24, 6)


@pytest.mark.parametrize("op", ["backprop", "train_step"])
def test_training_work_stays_in_lockstep(op: str) -> None:
    case = cases.Case(op, "float64", SHAPE)
    inputs = workloads.make_inputs(case)
    layers = {}
    for impl in ("fastdense", "numpy"):
        work = workloads.build(case, impl, inputs)
        work.timed.before_block()
        for _ in range(3):
            if work.timed.before_call is not None:
                work.timed.before_call()
            work.timed.call()
        layers[impl] = work.layer
    # After the same number of steps from the same weights, both layers hold the same weights.
    fd, ref = layers["fastdense"], layers["numpy"]
    np.testing.assert_allclose(fd.weight, ref.weight, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fd.bias, ref.bias, rtol=1e-10, atol=1e-12)
    assert not np.allclose(fd.weight, inputs.w)  # the steps did update the weights


@pytest.mark.parametrize("impl", ["fastdense", "numpy"])
def test_before_block_restores_the_initial_weights(impl: str) -> None:
    case = cases.Case("train_step", "float32", SHAPE)
    inputs = workloads.make_inputs(case)
    work = workloads.build(case, impl, inputs)
    work.timed.before_block()
    work.timed.call()
    work.timed.before_block()
    layer = work.layer
    np.testing.assert_array_equal(layer.weight, inputs.w)
    np.testing.assert_array_equal(layer.bias, inputs.bias)


def test_inputs_are_deterministic() -> None:
    case = cases.Case("forward", "float32", SHAPE)
    a, b = workloads.make_inputs(case), workloads.make_inputs(case)
    for name in ("x", "w", "bias", "dldy"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert getattr(a, name).dtype == np.float32


def test_result_does_not_disturb_the_timed_state() -> None:
    case = cases.Case("train_step", "float64", SHAPE)
    inputs = workloads.make_inputs(case)
    work = workloads.build(case, "fastdense", inputs)
    first = work.result()
    second = work.result()  # starts again from the initial weights
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_the_compile_step_compiles_the_general_kernels():
    """``runner.compile_kernels`` calls each operation on a shape whose layer takes the general
    kernels, which the grid's layers take, not those of few units, with either tile set (at
    most 16 units)."""
    from fastdense.bench.runner import COMPILE_SHAPE
    from fastdense.kernels import dense as kdense

    batch, n_in, units = COMPILE_SHAPE.m, COMPILE_SHAPE.k, COMPILE_SHAPE.n
    assert units > 16
    for dtype in ("float32", "float64"):
        assert kdense.product_paths(batch, n_in, units, dtype) == (False, False)
