"""``python -m fastdense train``: the comparison command end to end, on a few epochs."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("sklearn")

from fastdense.__main__ import main as cli_main
from fastdense.compare import main


def test_compare_end_to_end(capsys):
    assert main(["--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "1437 train / 360 test" in out
    assert "excludes JIT" in out
    rows = {line.split()[0]: line for line in out.splitlines()
            if line.startswith(("fastdense ", "scikit-learn"))}
    assert set(rows) == {"fastdense", "scikit-learn"}
    for line in rows.values():
        accuracy, seconds = (float(v) for v in re.findall(r"\d+\.\d+", line)[:2])
        assert 0.5 < accuracy <= 1.0  # two epochs of Adam already learn the digits
        assert seconds > 0
    assert re.search(r"speed-up: \d+\.\d+x", out)


def test_dispatch_through_python_m_fastdense(capsys):
    assert cli_main(["train", "--epochs", "1", "--sklearn-dtype", "float32"]) == 0
    assert "scikit-learn (float32)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "mnist"], "invalid choice"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "-3"], "--batch-size must be >= 1"),
    (["--epochs", "two"], "invalid int value"),
])
def test_bad_arguments(argv, words, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert words in captured.out + captured.err
