"""The pre-timing check: correct results pass, a wrong kernel fails with a clear message."""

from __future__ import annotations

import numpy as np
import pytest

from fastdense.bench import agreement, cases, workloads


def _numpy_result(case: cases.Case) -> tuple[workloads.Inputs, dict[str, np.ndarray]]:
    inputs = workloads.make_inputs(case)
    return inputs, workloads.build(case, "numpy", inputs).result()


@pytest.mark.parametrize("op", cases.OPERATIONS)
@pytest.mark.parametrize("dtype", cases.DTYPES)
def test_idiomatic_numpy_agrees(op: str, dtype: str) -> None:
    case = cases.Case(op, dtype, cases.Shape(16, 300, 24))
    inputs, got = _numpy_result(case)
    assert 0.0 <= agreement.check(case, "numpy", inputs, got) <= 1.0


@pytest.mark.parametrize(("op", "output"), [("gemm", "out"), ("forward", "y"),
                                             ("backprop", "dx"), ("train_step", "weight")])
def test_a_wrong_result_is_rejected(op: str, output: str) -> None:
    case = cases.Case(op, "float32", cases.Shape(16, 300, 24))
    inputs, got = _numpy_result(case)
    got[output] = got[output].copy()
    # A wrong kernel need not be far off to be wrong: 0.1% of the output's scale.
    got[output].flat[5] += 1e-3 * np.abs(got[output]).max()
    with pytest.raises(agreement.DisagreementError, match=f"{output} disagrees"):
        agreement.check(case, "numpy", inputs, got)


def test_a_dropped_term_is_rejected() -> None:
    # Leaving out one of K=4096 products is below 1e-3 relative: still caught.
    case = cases.Case("gemm", "float32", cases.Shape(8, 4096, 8))
    inputs = workloads.make_inputs(case)
    wrong = (inputs.x[:, 1:].astype(np.float64) @ inputs.w[1:].astype(np.float64))
    with pytest.raises(agreement.DisagreementError):
        agreement.check(case, "x", inputs, {"out": wrong.astype(np.float32)})


def test_nan_and_shape_are_rejected() -> None:
    case = cases.Case("gemm", "float64", cases.Shape(4, 5, 6))
    inputs, got = _numpy_result(case)
    got["out"][0, 0] = np.nan
    with pytest.raises(agreement.DisagreementError):
        agreement.check(case, "numpy", inputs, got)
    with pytest.raises(agreement.DisagreementError, match="shape"):
        agreement.check(case, "numpy", inputs, {"out": np.zeros((6, 4))})


@pytest.mark.parametrize("activation", [a for a in cases.ACTIVATIONS if a != "relu"])
@pytest.mark.parametrize("dtype", cases.DTYPES)
def test_every_activation_agrees_and_a_wrong_one_is_rejected(activation: str, dtype: str):
    """fastdense and NumPy pass with each activation (the float32 ones are fastdense's own
    formulas); the output or gradients of another activation do not."""
    case = cases.Case("train_step", dtype, cases.Shape(16, 300, 24), activation)
    inputs = workloads.make_inputs(case)
    for impl in ("fastdense", "numpy"):
        got = workloads.build(case, impl, inputs).result()
        assert 0.0 <= agreement.check(case, impl, inputs, got) <= 1.0
    other = "softplus" if activation != "softplus" else "elu"
    wrong = workloads.build(cases.Case("train_step", dtype, cases.Shape(16, 300, 24), other),
                            "fastdense", inputs).result()
    with pytest.raises(agreement.DisagreementError):
        agreement.check(case, "fastdense", inputs, wrong)
