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
    for batch, n_in, units in LAYER_SHAPES:
        if kdense.uses_narrow(batch, n_in, units, "float64"):
            backward = kdense.backward_narrow_for(batch, n_in, units, "float64")
            assert any(sig[0].dtype == numba.float64 for sig in backward.signatures)
    assert any(sig[0].dtype == numba.float64 for sig in knarrow.narrow_matmul.signatures)
    # ... and the input gradient by rows of layers of few units on the general kernels.
    if any(kdense.backward_for(batch, n_in, units, "float64") is kdense.backward_dx_by_rows
           and not kdense.uses_narrow(batch, n_in, units, "float64")
           for batch, n_in, units in LAYER_SHAPES):
        assert any(sig[0].dtype == numba.float64
                   for sig in kdense.backward_dx_by_rows.signatures)


def test_warmup_shapes_reach_the_aligned_outputs_and_few_units():
    assert all(any(kdense.uses_narrow(*shape, dtype) for shape in LAYER_SHAPES)
               for dtype in ("float32", "float64"))
    # Input gradients of few-unit layers as products and by rows, weight gradients by strips
    # and by row tiles (kernels.dense.backward_narrow_for).
    variant = {kernel: key for key, kernel in kdense._BACKWARD_NARROW.items()}
    for dtype in ("float32", "float64"):
        picked = {variant[kdense.backward_narrow_for(batch, n_in, units, dtype)]
                  for batch, n_in, units in LAYER_SHAPES
                  if kdense.uses_narrow(batch, n_in, units, dtype)}
        assert {rows for rows, _ in picked} == {True, False}
        assert {"strips", "tiles"} <= {by for _, by in picked}
        # ... and by strips of several units (three) with the AVX-512 tiles.
        assert ("unit_strips" in {by for _, by in picked}) == (
            kdense.STRIPS_UNITS_MAX[dtype] > kdense.STRIPS_UNITS)
    # A layer of few units on the general kernels with its input gradient by rows, in float64
    # with the AVX-512 tiles (MR 8, few-unit kernels up to 8 float64 units).
    assert any(8 < units <= kdense.SHORT_DX_UNITS and batch > kdense.DIRECT_ROWS
               for batch, n_in, units in LAYER_SHAPES)
    # float32 weight gradients of few units transposed (at most MR units) and by row tiles,
    # with the AVX-512 tiles (MR 8, narrow up to 16 units) and the AVX2 ones (6, up to 8).
    for mr, nr in ((8, 32), (6, 16)):
        narrow = [units for batch, n_in, units in LAYER_SHAPES
                  if 2 * units <= nr and batch > 2 and n_in > 2 and units > 2]
        assert {units <= mr for units in narrow} == {True, False}
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
