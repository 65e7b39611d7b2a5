"""``python -m fastdense bench`` end to end on a tiny grid, with few, short blocks."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import fastdense
from fastdense.bench import cli

TINY = ["--shapes", "4:8:3,16:32:8", "--square", "16", "--blocks", "2",
        "--block-time", "0.001", "--no-progress", "--no-torch"]
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run of every operation in float32 (the JIT compile is paid once for the module)."""
    tmp = tmp_path_factory.mktemp("bench")
    argv = [*TINY, "--dtype", "float32", "--json", str(tmp / "run.json")]
    if HAS_MPL:
        argv += ["--plot", str(tmp / "run.png")]
    code, out, err = run(argv)
    return {"code": code, "out": out, "err": err, "dir": tmp}


def test_exit_code_and_table(full_run: dict) -> None:
    assert full_run["code"] == 0, full_run["err"]
    out = full_run["out"]
    header = next(line for line in out.splitlines() if line.startswith("operation"))
    for column in ("shape", "dtype", "fastdense best", "numpy best", "fastdense GFLOP/s",
                   "numpy/fastdense"):
        assert column in header
    ops = {"gemm", "forward", "backprop", "train_step"}
    # Table rows start with the operation; the geometric-mean lines below are indented.
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in ops and not line.startswith(" ")]
    assert len(rows) == 2 * 4 + 1  # two layer shapes per op, plus one square GEMM
    # The ratio column, "!" marking a row whose blocks disagree (noisy machine).
    assert all(re.fullmatch(r"\d+\.\d\dx!?", row[-1]) for row in rows)
    assert "geometric mean" in out
    assert "JIT compile" in out and "machine:" in out
    assert re.search(r"fastdense \S+ \((avx512|avx2) tiles( with Intel's blocking)?\)", out)


def test_json_schema(full_run: dict) -> None:
    doc = json.loads((full_run["dir"] / "run.json").read_text())
    assert doc["schema"] == "fastdense-bench/1"
    assert doc["implementations"] == ["fastdense", "numpy"]
    machine = doc["machine"]
    for key in ("cpu", "available_cores", "threads", "numpy", "numba", "blas", "env"):
        assert key in machine
    assert isinstance(machine["threads"], int) and isinstance(machine["blas"], list)
    assert machine["fastdense_tiles"] in ("avx512", "avx2")
    assert machine["fastdense_vendor"] in ("intel", "other")
    assert set(doc["peak_gflops"]) == {"float32"}
    assert all(v > 0 for v in doc["peak_gflops"].values())
    assert isinstance(doc["compile"]["total_s"], float)
    assert set(doc["compile"]["by_dtype"]["float32"]) >= {"gemm", "forward", "backprop"}
    assert doc["settings"]["blocks"] == 2 and doc["settings"]["dtypes"] == ["float32"]
    assert len(doc["results"]) == 9
    groups = {r["group"] for r in doc["results"]}
    assert "train_step-float32-b16-32x8" in groups and "gemm-float32-sq16" in groups
    for r in doc["results"]:
        assert isinstance(r["flops"], int) and r["flops"] > 0
        for impl in ("fastdense", "numpy"):
            t = r["implementations"][impl]
            assert len(t["block_times_s"]) == 2
            assert 0 < t["best_s"] <= t["median_s"]
            assert isinstance(t["calls_per_block"], int) and t["calls_per_block"] >= 1
            assert 0 <= t["agreement"] <= 1
        ratio = r["ratios"]["numpy"]
        assert ratio == pytest.approx(r["implementations"]["numpy"]["best_s"]
                                      / r["implementations"]["fastdense"]["best_s"])
    assert set(doc["summary"]) == {"gemm", "forward", "backprop", "train_step"}
    assert doc["summary"]["gemm"]["cases"] == 3
    assert isinstance(doc["wall_time_s"], float)


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed")
def test_plot_file(full_run: dict) -> None:
    png = full_run["dir"] / "run.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wrong_kernel_fails_the_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = a @ b
        out[0, 0] += 0.01 * np.abs(out).max()
        return out

    monkeypatch.setattr(fastdense, "matmul", wrong_matmul)
    code, out, err = run([*TINY, "--ops", "gemm", "--dtype", "float64", "--no-peak"])
    assert code == cli.EXIT_WRONG_RESULT
    assert "FAILED" in err and "fastdense gemm-float64-b4-8x3: out disagrees" in err
    assert "operation" not in out  # no table for a wrong result


def test_openblas_coretype_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    code, out, err = run([*TINY, "--ops", "gemm", "--dtype", "float32", "--no-peak",
                          "--shapes", "4:8:3", "--square", ""])
    assert code == 0
    assert "OPENBLAS_CORETYPE=Haswell" in err and "OPENBLAS_CORETYPE=Haswell" in out


@pytest.mark.parametrize("argv", [["--threads", "0"], ["--ops", "conv"],
                                  ["--shapes", "1:2"], ["--blocks", "0"],
                                  ["--ops", "forward", "--shapes", "", "--square", "8"]])
def test_usage_errors(argv: list[str]) -> None:
    code, _, err = run([*TINY, *argv])
    assert code == cli.EXIT_USAGE
    assert "error" in err


def test_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    code, _, err = run([*TINY, "--plot", str(tmp_path / "x.png")])
    assert code == cli.EXIT_USAGE
    assert "matplotlib" in err and "pip install" in err


def test_quick_defaults_to_float32_and_the_quick_grid() -> None:
    args = cli.build_parser().parse_args(["--quick"])
    selected = cli._select_cases(args, ["gemm"], [cli.QUICK_DTYPE])
    assert {c.dtype for c in selected} == {"float32"}
    assert len(selected) == 5


def test_torch_column_when_installed() -> None:
    pytest.importorskip("torch")
    argv = [a for a in TINY if a != "--no-torch"]
    code, out, err = run([*argv, "--dtype", "float32", "--no-peak", "--shapes", "4:8:3",
                          "--square", ""])
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("operation"))
    assert "torch best" in header and "torch/fastdense" in header


def test_another_activation(tmp_path: Path) -> None:
    """``--activation`` gives every layer case that activation, on every side, and says so."""
    path = tmp_path / "gelu.json"
    code, out, err = run([*TINY, "--dtype", "float64", "--ops", "gemm", "forward",
                          "--activation", "gelu", "--json", str(path)])
    assert code == 0, err
    assert "layers' activation: gelu" in out
    doc = json.loads(path.read_text())
    assert doc["settings"]["activation"] == "gelu"
    groups = [r["group"] for r in doc["results"]]
    assert all(g.endswith("-gelu") for g in groups if g.startswith("forward"))
    assert not any(g.endswith("-gelu") for g in groups if g.startswith("gemm"))


def test_an_unknown_activation_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        run([*TINY, "--activation", "softmax"])


def test_a_gelu_peer_without_scipy_is_announced(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastdense import reference

    monkeypatch.setattr(reference, "VECTORIZED_ERFC", False)
    assert "SciPy is not installed" in cli._peer_warning("gelu")
    assert cli._peer_warning("tanh") is None
    monkeypatch.setattr(reference, "VECTORIZED_ERFC", True)
    assert cli._peer_warning("gelu") is None


def test_help_documents_custom_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    """``--shapes`` and ``--square`` are user options (a layer of 10 units, say), not hidden."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--shapes B:IN:OUT,..." in text and "--square N,..." in text


@pytest.mark.parametrize(("vendor", "expected"), [
    ("intel", "fastdense 0.0 (avx512 tiles with Intel's blocking)"),
    ("other", "fastdense 0.0 (avx512 tiles)"),
])
def test_header_names_the_tiles_and_the_blocking(vendor: str, expected: str) -> None:
    from fastdense.bench.report import header

    machine = {"cpu": "x", "available_cores": 2, "threads": 2, "numpy": "2", "numba": "0.6",
               "numba_threading_layer": "omp", "fastdense": "0.0", "fastdense_tiles": "avx512",
               "fastdense_vendor": vendor, "blas": []}
    assert expected in header(machine, {}, {})
