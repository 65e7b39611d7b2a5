"""Benchmark grids, stable names, FLOP counts and the test-only shape syntax."""

from __future__ import annotations

import pytest

from fastdense.bench import cases


def test_full_grid_covers_the_specified_grid() -> None:
    grid = cases.full_grid()
    layer = [c for c in grid if not c.shape.square]
    assert len(layer) == 4 * 2 * 5 * 6
    square = [c for c in grid if c.shape.square]
    assert {c.op for c in square} == {"gemm"}
    assert sorted({c.shape.m for c in square}) == [256, 512, 1024, 2048]
    assert len({c.group for c in grid}) == len(grid)  # names are unique


def test_quick_grid_is_a_subset() -> None:
    assert set(cases.quick_grid()) <= set(cases.full_grid())


def test_group_names_are_stable() -> None:
    # Saved pytest-benchmark runs and JSON files are matched by these names.
    case = cases.Case("forward", "float32", cases.Shape(256, 784, 512))
    assert case.group == "forward-float32-b256-784x512"
    square = cases.Case("gemm", "float64", cases.Shape(1024, 1024, 1024, square=True))
    assert square.group == "gemm-float64-sq1024"


def test_flops() -> None:
    shape = cases.Shape(2, 3, 4)
    assert cases.Case("gemm", "float32", shape).flops == 48
    assert cases.Case("backprop", "float32", shape).flops == 96
    assert cases.Case("train_step", "float32", shape).flops == 144


def test_parse_shapes() -> None:
    assert cases.parse_shapes("8:16:4, 2x3x5") == [cases.Shape(8, 16, 4), cases.Shape(2, 3, 5)]
    for bad in ("8:16", "a:b:c", "0:1:1", ""):
        with pytest.raises(ValueError):
            cases.parse_shapes(bad)


def test_case_validation() -> None:
    with pytest.raises(ValueError, match="operation"):
        cases.Case("conv", "float32", cases.Shape(1, 1, 1))
    with pytest.raises(ValueError, match="dtype"):
        cases.Case("gemm", "float16", cases.Shape(1, 1, 1))
    with pytest.raises(ValueError, match="GEMM-only"):
        cases.Case("forward", "float32", cases.Shape(4, 4, 4, square=True))
