"""``python -m fastdense warmup`` and the command dispatcher."""

from __future__ import annotations

import pytest

from fastdense.__main__ import main as cli
from fastdense.warmup import main as warmup


def test_warmup_compiles_and_reports(capsys):
    assert warmup(["--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "float64: kernels ready in" in out and "warmup done" in out


def test_dispatcher_help_and_errors(capsys):
    assert cli(["--help"]) == 0
    assert "bench" in capsys.readouterr().out
    assert cli([]) == 2
    with pytest.raises(SystemExit) as exc:
        cli(["fly"])
    assert exc.value.code == 2
