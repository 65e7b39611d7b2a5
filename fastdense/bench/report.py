"""Present results: the text table, the per-operation geometric means, the JSON document."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from fastdense.bench.runner import REFERENCE, SUBJECT, CaseResult

SCHEMA = "fastdense-bench/1"

NOISY = 0.2
"""Median more than this fraction above best: the blocks disagree, flag the row."""


def format_seconds(seconds: float) -> str:
    """``1.23 ms``-style duration with three significant digits."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def geometric_mean(values: Iterable[float]) -> float | None:
    """Geometric mean of positive values, None if there are none."""
    logs = [math.log(v) for v in values if v is not None and v > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None


def summary(results: Sequence[CaseResult], peers: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Geometric-mean ratio ``peer / fastdense`` per operation, over all shapes and dtypes.

    Returns
    -------
    dict
        ``{op: {"cases": n, "numpy": gmean, "torch": gmean, "by_dtype": {dtype: {...}}}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for op in dict.fromkeys(r.case.op for r in results):
        mine = [r for r in results if r.case.op == op]
        entry: dict[str, Any] = {"cases": len(mine)}
        for peer in peers:
            entry[peer] = geometric_mean(r.ratio(peer) for r in mine)
        entry["by_dtype"] = {
            dt: {peer: geometric_mean(r.ratio(peer) for r in mine if r.case.dtype == dt)
                 for peer in peers}
            for dt in dict.fromkeys(r.case.dtype for r in mine)
        }
        out[op] = entry
    return out


def noisy(result: CaseResult) -> bool:
    """Whether any implementation's median block is more than NOISY above its best."""
    return any(t.median > (1 + NOISY) * t.best for t in result.timings.values())


def _columns(impls: Sequence[str]) -> list[str]:
    cols = ["operation", "shape", "dtype"]
    for impl in impls:
        cols += [f"{impl} best", f"{impl} median"]
    cols += ["fastdense GFLOP/s"]
    cols += [f"{peer}/fastdense" for peer in impls if peer != SUBJECT]
    return cols


def table(results: Sequence[CaseResult], impls: Sequence[str]) -> str:
    """The results as an aligned text table, then the geometric means per operation.

    Ratios are ``peer best / fastdense best``: above 1 fastdense is faster.
    """
    cols = _columns(impls)
    rows = []
    for r in results:
        row = [r.case.op, r.case.shape.label, r.case.dtype]
        for impl in impls:
            t = r.timings.get(impl)
            row += [format_seconds(t.best), format_seconds(t.median)] if t else ["-", "-"]
        row.append(f"{r.gflops(SUBJECT):.1f}")
        mark = "!" if noisy(r) else ""
        row += [f"{r.ratio(peer):.2f}x{mark}" for peer in impls if peer != SUBJECT]
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c)
              for i, c in enumerate(cols)]
    left = 3  # operation, shape and dtype read better left-aligned
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w)
                       for i, (c, w) in enumerate(zip(cols, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(v.ljust(w) if i < left else v.rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths, strict=True))))
    peers = [p for p in impls if p != SUBJECT]
    flagged = sum(noisy(r) for r in results)
    if flagged:
        lines.append(f"! {flagged} of {len(results)} rows noisy: a median more than "
                     f"{NOISY:.0%} above its best; rerun on an idle machine before trusting "
                     "those ratios")
    lines.append("")
    lines.append("geometric mean of best-time ratios (>1: fastdense faster)")
    for op, entry in summary(results, peers).items():
        parts = [f"{peer}/fastdense {_ratio(entry[peer])}" for peer in peers]
        by_dtype = "; ".join(
            f"{dt}: " + ", ".join(_ratio(v[peer]) for peer in peers)
            for dt, v in entry["by_dtype"].items())
        lines.append(f"  {op:<10} {', '.join(parts)}   ({entry['cases']} cases; {by_dtype})")
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def header(machine: dict[str, Any], peaks: dict[str, float], compile_s: dict[str, Any]) -> str:
    """Machine, peak and compile-time lines printed above the table."""
    blas = ", ".join(f"{b['owner'] or b['prefix']}: {b['internal_api']} {b['version']} "
                     f"({b['architecture']} kernel, {b['num_threads']} threads)"
                     for b in machine["blas"]) or "none found"
    versions = (f"numpy {machine['numpy']}, numba {machine['numba']} "
                f"({machine['numba_threading_layer']}), fastdense {machine['fastdense']}")
    if machine.get("fastdense_tiles"):
        blocking = " with Intel's blocking" if machine.get("fastdense_vendor") == "intel" else ""
        versions += f" ({machine['fastdense_tiles']} tiles{blocking})"
    if machine.get("torch"):
        versions += f", torch {machine['torch']}"
    lines = [
        f"machine: {machine['cpu']}, {machine['available_cores']} cores available, "
        f"{machine['threads']} threads used by every implementation",
        f"software: {versions}; BLAS: {blas}",
    ]
    if peaks:
        lines.append("measured peak (best NumPy 2048^3 GEMM): "
                     + ", ".join(f"{dt} {v:.0f} GFLOP/s" for dt, v in peaks.items()))
    total = compile_s.get("total_s", 0.0)
    per = "; ".join(f"{dt}: " + ", ".join(f"{op} {s:.1f}s" for op, s in ops.items())
                    for dt, ops in compile_s.get("by_dtype", {}).items())
    lines.append(f"fastdense JIT compile / cache load (not in timings): {total:.1f} s ({per})")
    return "\n".join(lines)


def to_json(results: Sequence[CaseResult], impls: Sequence[str], *, machine: dict[str, Any],
            peaks: dict[str, float], peak_method: str, compile_s: dict[str, Any],
            settings: dict[str, Any], wall_time_s: float,
            warnings: Sequence[str] = ()) -> dict[str, Any]:
    """Every figure of a run as a JSON-ready dict (schema ``fastdense-bench/1``)."""
    peers = [p for p in impls if p != SUBJECT]
    cases = []
    for r in results:
        entry = {
            "group": r.case.group,
            "op": r.case.op,
            "dtype": r.case.dtype,
            "shape": r.case.shape.id,
            "m": r.case.shape.m,
            "k": r.case.shape.k,
            "n": r.case.shape.n,
            "flops": r.case.flops,
            "implementations": {
                impl: {
                    "best_s": t.best,
                    "median_s": t.median,
                    "calls_per_block": t.number,
                    "block_times_s": list(t.block_times),
                    "gflops_best": r.gflops(impl, "best"),
                    "gflops_median": r.gflops(impl, "median"),
                    "agreement": r.agreement.get(impl),
                }
                for impl, t in r.timings.items()
            },
            "ratios": {peer: r.ratio(peer) for peer in peers},
            "noisy": noisy(r),
        }
        cases.append(entry)
    return {
        "schema": SCHEMA,
        "implementations": list(impls),
        "reference": REFERENCE,
        "settings": settings,
        "machine": machine,
        "peak_gflops": peaks,
        "peak_method": peak_method,
        "compile": compile_s,
        "results": cases,
        "summary": summary(results, peers),
        "warnings": list(warnings),
        "wall_time_s": wall_time_s,
    }
