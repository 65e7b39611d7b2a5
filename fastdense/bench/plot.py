"""Plot GFLOP/s against problem size per implementation, with the measured peak as a line."""

from __future__ import annotations

import os
from typing import Any

_MARKERS = {"gemm": "o", "forward": "s", "backprop": "^", "train_step": "D"}
_COLORS = {"fastdense": "tab:blue", "numpy": "tab:orange", "torch": "tab:red"}


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailableError` with the install hint unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise PlotUnavailableError(
            "--plot needs matplotlib, which is not installed: "
            "pip install 'fastdense[plot]' (or pip install matplotlib)") from err


def write_plot(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a PNG of best-block GFLOP/s vs FLOPs per call: a panel per dtype and operation.

    Each panel has one line per implementation and the measured peak of its dtype as a
    dashed line (see ``report["peak_method"]``).

    Parameters
    ----------
    report : dict
        The JSON document of a run (:func:`fastdense.bench.report.to_json`).
    path : path-like
        Output file (PNG).
    """
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none may exist
    import matplotlib.pyplot as plt

    results = report["results"]
    dtypes = list(dict.fromkeys(r["dtype"] for r in results)) or ["float32"]
    ops = list(dict.fromkeys(r["op"] for r in results)) or ["gemm"]
    fig, axes = plt.subplots(len(dtypes), len(ops), figsize=(4.2 * len(ops), 3.6 * len(dtypes)),
                             squeeze=False, sharey="row")
    for row, dtype in enumerate(dtypes):
        peak = report.get("peak_gflops", {}).get(dtype)
        for col, op in enumerate(ops):
            ax = axes[row][col]
            rows = [r for r in results if r["dtype"] == dtype and r["op"] == op]
            for impl in report["implementations"]:
                pts = sorted((r["flops"], r["implementations"][impl]["gflops_best"])
                             for r in rows if impl in r["implementations"])
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, marker=_MARKERS.get(op, "o"), linewidth=1, alpha=0.85,
                            color=_COLORS.get(impl), label=impl)
            if peak:
                ax.axhline(peak, color="black", linestyle="--", linewidth=1,
                           label=f"peak {peak:.0f}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{op}, {dtype}", fontsize="medium")
            ax.grid(True, which="both", alpha=0.3)
            if row == len(dtypes) - 1:
                ax.set_xlabel("FLOPs per call")
            if col == 0:
                ax.set_ylabel("GFLOP/s (best block)")
            ax.legend(fontsize="x-small")
    machine = report["machine"]
    fig.suptitle(f"fastdense bench: {machine['cpu']}, {machine['threads']} threads; "
                 "peak = best NumPy 2048^3 GEMM", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
