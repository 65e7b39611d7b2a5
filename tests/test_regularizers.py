"""Regularizers: Keras identifiers, penalty values and gradients."""

from __future__ import annotations

import numpy as np
import pytest

from fastdense import regularizers as regs

W = np.array([[0.5, -2.0], [0.0, 3.0]])


@pytest.mark.parametrize("identifier, l1, l2", [
    ("l1", 0.01, 0.0), ("l2", 0.0, 0.01), ("l1l2", 0.0, 0.0), ("l1_l2", 0.01, 0.01),
    (regs.L1(0.3), 0.3, 0.0), (regs.L2(0.2), 0.0, 0.2), (regs.L1L2(0.1, 0.4), 0.1, 0.4),
])
def test_factors_value_and_gradient(identifier, l1, l2):
    reg = regs.get(identifier)
    assert (reg.l1, reg.l2) == (l1, l2)
    assert reg(W) == pytest.approx(l1 * 5.5 + l2 * (0.25 + 4 + 9), rel=1e-15)
    np.testing.assert_allclose(reg.gradient(W), l1 * np.sign(W) + 2 * l2 * W, rtol=1e-15)


def test_serialization_round_trip():
    for reg in (regs.L1(0.2), regs.L2(0.5), regs.L1L2(0.1, 0.2)):
        cfg = regs.serialize(reg)
        assert cfg["class_name"] == type(reg).__name__
        assert regs.get(cfg) == reg
    assert regs.serialize(None) is None and regs.get(None) is None


def test_callable_pair():
    reg = regs.get((lambda w: float(np.sum(w ** 4)), lambda w: 4 * w ** 3))
    assert reg(W) == pytest.approx(0.0625 + 16 + 81)
    np.testing.assert_allclose(reg.gradient(W), 4 * W ** 3)


@pytest.mark.parametrize("bad, err", [("l3", ValueError), (0.1, TypeError),
                                      (lambda w: 0.0, TypeError),
                                      ({"class_name": "L5"}, ValueError)])
def test_bad_identifiers(bad, err):
    with pytest.raises(err):
        regs.get(bad)


@pytest.mark.parametrize("value, err", [(-0.1, ValueError), (float("nan"), ValueError),
                                        ("0.1", TypeError)])
def test_bad_factors(value, err):
    with pytest.raises(err, match="l1"):
        regs.L1(value)
