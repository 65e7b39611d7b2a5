"""Command line: ``python -m fastdense {bench,train,warmup} ...``."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each subcommand lives in its own module, imported only when chosen, so that ``bench`` does
# not pay for scikit-learn and ``train`` does not pay for the benchmark machinery.
_COMMANDS = {
    "bench": ("fastdense.bench.cli", "Benchmark fastdense against NumPy (and PyTorch)."),
    "train": ("fastdense.compare", "Train on a bundled dataset beside scikit-learn's MLP."),
    "warmup": ("fastdense.warmup", "Compile every kernel ahead of time into Numba's cache."),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m fastdense", description=__doc__)
    parser.add_argument("command", choices=sorted(_COMMANDS),
                        help="; ".join(f"{k}: {v[1]}" for k, v in sorted(_COMMANDS.items())))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(_COMMANDS[args.command][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
