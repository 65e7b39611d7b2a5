"""``python -m fastdense bench``: time fastdense against NumPy (and PyTorch) and report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from fastdense import reference
from fastdense.bench import cases as cases_mod
from fastdense.bench import machine, report, runner, workloads
from fastdense.bench.agreement import DisagreementError
from fastdense.bench.pinning import available_cores

# (blocks, seconds per block).  Many short blocks rather than few long ones: a block that a
# background process disturbs is discarded by taking the best, so more blocks mean more
# chances of clean ones.  --quick trades some stability for a run of a few minutes, but its
# blocks hold at least two calls of its largest cases (13 ms): with 15 ms blocks each was one
# call right after the pools went idle, and a first call after 0.3 s idle took 13 to 29 ms on
# a shared 2-core host for both libraries (steady state 12.3 ms and 12.8 ms), so the quick
# forward 1024x1024->1024 read 0.80x-0.83x where the full grid reads 1.02x-1.06x.
QUICK_TIMING = (15, 0.03)
FULL_TIMING = (15, 0.04)

QUICK_DTYPE = "float32"

EXIT_OK, EXIT_WRONG_RESULT, EXIT_USAGE = 0, 1, 2


def _ops(values: Sequence[str]) -> list[str]:
    # Accept both "--ops gemm forward" and "--ops gemm,forward".
    ops = [v for value in values for v in value.split(",") if v]
    bad = [op for op in ops if op not in cases_mod.OPERATIONS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown operation(s) {', '.join(bad)}; choose from {', '.join(cases_mod.OPERATIONS)}")
    return list(dict.fromkeys(ops))


def _sizes(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The ``bench`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m fastdense bench",
        description="Time fastdense against idiomatic NumPy (and PyTorch when installed): "
                    "GEMM, Dense forward, backprop and training step. Results are checked "
                    "against float64 NumPy before timing. The table goes to stdout, progress "
                    "to stderr.")
    p.add_argument("--quick", action="store_true",
                   help="a representative subset with shorter timing (a few minutes)")
    p.add_argument("--ops", nargs="+", metavar="OP", default=list(cases_mod.OPERATIONS),
                   help=f"operations to run (default all): {', '.join(cases_mod.OPERATIONS)}")
    p.add_argument("--dtype", choices=cases_mod.DTYPES, default=None,
                   help="only this dtype (default: both; float32 with --quick)")
    p.add_argument("--activation", choices=cases_mod.ACTIVATIONS,
                   default=cases_mod.DEFAULT_ACTIVATION,
                   help="the layers' activation, on every side (default: relu)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for every implementation (default: all available cores, "
                        f"here {available_cores()})")
    p.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    p.add_argument("--plot", metavar="PATH",
                   help="write a PNG of GFLOP/s vs problem size (needs matplotlib)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--shapes", metavar="B:IN:OUT,...",
                   help="layer shapes to run instead of the grid's (batch:inputs:units, comma "
                        "separated; e.g. 32:784:10,1024:784:10)")
    p.add_argument("--square", metavar="N,...",
                   help="square GEMM sizes to run instead of the grid's (with --shapes: "
                        "besides those; gemm only)")
    # Test and expert knobs, hidden from --help: timing effort.
    hidden = argparse.SUPPRESS
    p.add_argument("--blocks", type=int, help=hidden)
    p.add_argument("--block-time", type=float, help=hidden)
    p.add_argument("--no-peak", action="store_true", help=hidden)
    return p


def _select_cases(args: argparse.Namespace, ops: list[str], dtypes: list[str]
                  ) -> list[cases_mod.Case]:
    if args.shapes or args.square:
        shapes = cases_mod.parse_shapes(args.shapes) if args.shapes else []
        square = _sizes(args.square) if args.square else []
        return cases_mod.make_grid(ops, dtypes, shapes, square)
    if args.quick:
        return cases_mod.quick_grid(ops, dtypes)
    return cases_mod.full_grid(ops, dtypes)


def _progress(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=disable, leave=False,
                dynamic_ncols=True)


def _log(message: str) -> None:
    from tqdm.auto import tqdm

    # tqdm.write keeps a running progress bar intact.
    tqdm.write(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (0 ok, 1 a wrong result, 2 usage error).

    Parameters
    ----------
    argv : list of str, optional
        Arguments after ``bench`` (default ``sys.argv[1:]``).
    """
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        ops = _ops(args.ops)
        if args.dtype:
            dtypes = [args.dtype]
        else:
            # --quick stays within minutes of cold JIT compilation by measuring the dtype
            # most models train in; the full run covers both.
            dtypes = [QUICK_DTYPE] if args.quick else list(cases_mod.DTYPES)
        threads = args.threads if args.threads is not None else available_cores()
        limit = runner_limit()
        if not 1 <= threads <= limit:
            raise ValueError(f"--threads must be between 1 and {limit}, got {threads}")
        selected = [c if c.op == "gemm" else dataclasses.replace(c, activation=args.activation)
                    for c in _select_cases(args, ops, dtypes)]
        if not selected:
            raise ValueError("no benchmark case selected (square sizes are GEMM-only)")
        if args.blocks is not None and args.blocks < 1:
            raise ValueError(f"--blocks must be at least 1, got {args.blocks}")
        if args.block_time is not None and args.block_time < 0:
            raise ValueError(f"--block-time must be >= 0, got {args.block_time}")
        if args.plot:
            from fastdense.bench.plot import require_matplotlib
            require_matplotlib()
    except (argparse.ArgumentTypeError, ValueError, RuntimeError) as err:
        print(f"fastdense bench: error: {err}", file=sys.stderr)
        return EXIT_USAGE

    notes = [w for w in (machine.openblas_coretype_warning(), machine.busy_warning(),
                         _peer_warning(args.activation)) if w]
    for warning in notes:
        print(f"WARNING: {warning}", file=sys.stderr)

    impls = ["fastdense", "numpy"]
    if not args.no_torch and workloads.torch_available():
        import torch  # noqa: F401  (imported before pinning so its pool is pinned too)
        impls.append("torch")

    quick_or_full = QUICK_TIMING if args.quick else FULL_TIMING
    settings = runner.Settings(
        threads=threads,
        blocks=args.blocks or quick_or_full[0],
        block_time=args.block_time if args.block_time is not None else quick_or_full[1],
    )
    disable = args.no_progress

    used_ops = list(dict.fromkeys(c.op for c in selected))
    used_dtypes = list(dict.fromkeys(c.dtype for c in selected))
    steps = len(used_dtypes) * len(runner.compile_order(used_ops))
    with _progress(steps, "compiling fastdense kernels", disable) as bar:
        t0 = time.perf_counter()
        by_dtype = runner.compile_kernels(used_ops, used_dtypes, args.activation,
                                          on_step=lambda _: bar.update())
        compile_s = {"total_s": time.perf_counter() - t0, "by_dtype": by_dtype,
                     "method": "first call minus second call of each operation on a tiny "
                               "problem (Numba compile or on-disk cache load)"}

    peaks: dict[str, float] = {}
    if not args.no_peak:
        _log(f"measuring peak: {machine.PEAK_METHOD}")
        peaks = {dt: machine.measure_peak(dt, threads) for dt in used_dtypes}

    results: list[runner.CaseResult] = []
    with _progress(len(selected), "benchmarking", disable) as bar:
        for case in selected:
            bar.set_postfix_str(case.group, refresh=False)
            try:
                results.append(runner.run_case(case, impls, settings))
            except DisagreementError as err:
                bar.close()
                print(f"fastdense bench: FAILED: {err}\nA result outside the rounding bound "
                      "of float64 NumPy is a bug, not a speed-up: nothing was reported.",
                      file=sys.stderr)
                return EXIT_WRONG_RESULT
            bar.update()

    info = machine.describe(threads)
    print(report.header(info, peaks, compile_s))
    for warning in notes:
        print(f"WARNING: {warning}")
    print(f"timing: {settings.blocks} alternating blocks of ~{settings.block_time * 1e3:.0f} ms "
          "per implementation, best and median block shown; ratio = peer best / fastdense "
          f"best (>1: fastdense faster); layers' activation: {args.activation}")
    print()
    print(report.table(results, impls))
    wall = time.perf_counter() - started
    print(f"\nwall time {wall:.1f} s")

    if args.json or args.plot:
        doc = report.to_json(results, impls, machine=info, peaks=peaks,
                             peak_method=machine.PEAK_METHOD, compile_s=compile_s,
                             settings=_settings_dict(args, settings, ops, dtypes),
                             wall_time_s=wall, warnings=notes)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=2)
            _log(f"wrote {args.json}")
        if args.plot:
            from fastdense.bench.plot import write_plot
            write_plot(doc, args.plot)
            _log(f"wrote {args.plot}")
    return EXIT_OK


def _peer_warning(activation: str) -> str | None:
    """A warning when the NumPy peer's activation is not what a NumPy user would run."""
    if activation == "gelu" and not reference.VECTORIZED_ERFC:
        return ("SciPy is not installed: the NumPy peer's GELU calls math.erfc element by "
                "element, far slower than with scipy.special.erfc (pip install scipy)")
    return None


def runner_limit() -> int:
    """The largest thread count Numba allows in this process."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def _settings_dict(args: argparse.Namespace, settings: runner.Settings, ops: list[str],
                   dtypes: list[str]) -> dict[str, Any]:
    return {
        "quick": bool(args.quick),
        "ops": ops,
        "dtypes": dtypes,
        "threads": settings.threads,
        "blocks": settings.blocks,
        "block_time_s": settings.block_time,
        "warmup_calls": settings.warmup_calls,
        "warmup_time_s": settings.warmup_time,
        "activation": args.activation,
        "learning_rate": workloads.LEARNING_RATE,
        "settle": "before every block, wait until this process uses < 0.2 cores over 10 ms "
                  "(previous thread pools idle), at most 0.5 s",
        "ratio": "numpy best / fastdense best (same run, alternating blocks)",
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
