"""The example scripts run to completion, as a new user would run them."""

from __future__ import annotations

import pathlib
import runpy

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script, capsys):
    pytest.importorskip("sklearn")
    runpy.run_path(str(script), run_name="__main__")
    assert "test accuracy" in capsys.readouterr().out
