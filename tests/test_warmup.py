"""``python -m fastdense warmup`` and the command dispatcher."""

from __future__ import annotations

import numba
import pytest

from fastdense.__main__ import main as cli
from fastdense._aligned import aligns_output, reads_b_in_place
from fastdense.kernels import dense as kdense
from fastdense.kernels import narrow as knarrow
from fastdense.kernels.memory import aligned_empty_2d, empty_2d_in_phase
from fastdense.warmup import FEW_ROWS, LAYER_SHAPES
from fastdense.warmup import main as warmup


def test_warmup_compiles_and_reports(capsys):
    assert warmup(["--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "float64: kernels ready in" in out and "warmup done" in out
    # Among what it compiles: the allocators of large outputs (see fastdense._aligned).
    assert any(sig[2].dtype == numba.float64 for sig in aligned_empty_2d.signatures)
    assert any(sig[2].dtype == numba.float64 for sig in empty_2d_in_phase.signatures)
    # ... and the transposed products of layers of few units.
    assert any(sig[0].dtype == numba.float64 for sig in kdense.forward_narrow.signatures)
    for shape in LAYER_SHAPES:
        if kdense.uses_narrow(*shape, "float64"):
            backward = kdense.backward_narrow_for(*shape, "float64")
            assert any(sig[0].dtype == numba.float64 for sig in backward.signatures)
    assert any(sig[0].dtype == numba.float64 for sig in knarrow.narrow_matmul.signatures)


def test_warmup_shapes_reach_the_aligned_outputs_and_few_units():
    assert all(any(kdense.uses_narrow(*shape, dtype) for shape in LAYER_SHAPES)
               for dtype in ("float32", "float64"))
    # Both ways of a few-unit layer's forward product, with either tile set's constants
    # (the AVX2 set's float32 tiles, 6 x 16, and the narrow ones, 6 x 16).
    narrow = [(batch, units) for batch, n_in, units in LAYER_SHAPES
              if kdense.uses_narrow(batch, n_in, units, "float32")]
    assert {kdense.row_tiles_pay(batch, units, 6, 16, 6, 16) for batch, units in narrow} == {
        True, False}
    assert all(kdense.row_tiles_pay(batch, units, 8, 32, 6, 16) for batch, units in narrow)
    # Input gradients of few-unit layers as products and by rows (kernels.dense.DIRECT_ROWS).
    assert {batch > kdense.DIRECT_ROWS for batch, n_in, units in LAYER_SHAPES
            if kdense.uses_narrow(batch, n_in, units, "float64")} == {True, False}
    batch, n_in, units = LAYER_SHAPES[-1]
    assert aligns_output((batch, units), 4) and aligns_output((batch, units), 8)
    assert FEW_ROWS < batch and reads_b_in_place(FEW_ROWS, units, n_in)


def test_dispatcher_help_and_errors(capsys):
    assert cli(["--help"]) == 0
    assert "bench" in capsys.readouterr().out
    assert cli([]) == 2
    with pytest.raises(SystemExit) as exc:
        cli(["fly"])
    assert exc.value.code == 2
