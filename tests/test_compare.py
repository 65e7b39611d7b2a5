"""``python -m fastdense train``: the comparison command end to end, on a few epochs."""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest

pytest.importorskip("sklearn")

from fastdense.__main__ import main as cli_main
from fastdense.compare import main


def _rows(out):
    """The Markdown table's data rows, keyed by library name."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].split()[0] in ("fastdense", "scikit-learn"):
            rows[cells[0].split()[0]] = cells
    return rows


def test_compare_end_to_end(capsys):
    assert main(["--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--seed", "1",
                 "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "1437 train / 360 test" in out
    assert "excludes JIT" in out and "best of 2" in out and "1 thread(s)" in out
    assert "load average" in out and "no early stopping" in out
    rows = _rows(out)
    assert set(rows) == {"fastdense", "scikit-learn"}
    for cells in rows.values():
        assert cells[1] == "float32"  # the same dtype on both sides by default
        accuracy, seconds, loss = (float(c) for c in cells[2:5])
        assert 0.5 < accuracy <= 1.0  # two epochs of Adam already learn the digits
        assert seconds > 0 and loss > 0
    assert re.search(r"speed-up: \d+\.\d+x", out)


def test_same_settings_on_both_sides():
    """The scikit-learn model gets fastdense's architecture and Adam settings."""
    import argparse

    from fastdense.compare import _fastdense_model, _Sklearn

    args = argparse.Namespace(hidden=7, batch_size=16, learning_rate=0.01, beta_1=0.8,
                              beta_2=0.99, epsilon=1e-6, seed=3, epochs=4,
                              sklearn_dtype="float32")
    clf = _Sklearn((np.zeros((4, 2)),) * 2 + (np.zeros(4),) * 2, args)._make(args.epochs)
    model = _fastdense_model(7, 10, args, 3)
    opt = model.optimizer
    assert (clf.learning_rate_init, clf.beta_1, clf.beta_2, clf.epsilon) == \
        (opt.learning_rate, opt.beta_1, opt.beta_2, opt.epsilon)
    assert clf.hidden_layer_sizes == (model.layers[0].units,) and clf.activation == "relu"
    assert clf.batch_size == 16 and clf.max_iter == 4 and clf.shuffle
    assert not clf.early_stopping and clf.tol == 0.0 and clf.n_iter_no_change > clf.max_iter
    assert clf.alpha == 0.0


def test_dispatch_through_python_m_fastdense(capsys):
    n = min(2, numba.config.NUMBA_NUM_THREADS)
    assert cli_main(["train", "--epochs", "1", "--repeat", "1", "--sklearn-dtype", "float64",
                     "--threads", str(n)]) == 0
    out = capsys.readouterr().out
    assert _rows(out)["scikit-learn"][1] == "float64"
    assert f"{n} thread(s)" in out


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "mnist"], "invalid choice"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "-3"], "--batch-size must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--beta-1", "1.5"], "beta_1 must be a finite number"),
    (["--epsilon", "0"], "--epsilon must be > 0"),
    (["--epochs", "two"], "invalid int value"),
])
def test_bad_arguments(argv, words, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert words in captured.out + captured.err
