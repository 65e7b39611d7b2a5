"""``python -m fastdense train``: train on a bundled dataset beside scikit-learn's MLP.

Both sides get the same data (scikit-learn's bundled ``load_digits``: no download), the same
standardization and fixed stratified train/test split, the same architecture (64 -> hidden relu
-> 10 softmax), the same Adam settings (learning rate, betas, *and* epsilon: Keras' 1e-7 is
passed to scikit-learn, whose default is 1e-8), the same batch size, the same number of epochs
(scikit-learn's early stopping is disabled: ``tol=0``, ``n_iter_no_change > epochs``) and no L2
penalty (``alpha=0``).  fastdense trains in float32.

Fit times exclude fastdense's JIT compilation: a throw-away model is trained for one epoch on a
few batches first, which compiles (or loads from Numba's cache) every kernel the timed fit uses.
With ``--repeat R`` both fits are repeated and the fastest of each is reported (as ``timeit``
does), which filters out noise from other processes on the machine.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import numpy as np

_DATASETS = ("digits",)


def _load(name: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardized train/test arrays (float64) with integer labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if name != "digits":  # pragma: no cover - argparse restricts the choices
        raise ValueError(f"unknown dataset {name!r}; expected one of {_DATASETS}")
    x, y = load_digits(return_X_y=True)
    # A fixed split (random_state=0) so every run compares on the same test set.
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train), scaler.transform(x_test), y_train, y_test


def _fastdense_model(hidden: int, classes: int, args: argparse.Namespace, seed: int) -> Any:
    from fastdense.dense import Dense
    from fastdense.model import Sequential
    from fastdense.optimizers import Adam

    model = Sequential([
        Dense(hidden, activation="relu", dtype=np.float32, seed=seed),
        Dense(classes, activation="softmax", dtype=np.float32, seed=seed + 1),
    ])
    model.compile(Adam(args.learning_rate, beta_1=0.9, beta_2=0.999, epsilon=args.epsilon),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _run_fastdense(data, args) -> tuple[float, float, float]:
    x_train, x_test, y_train, y_test = data
    x_train = x_train.astype(np.float32)
    x_test = x_test.astype(np.float32)
    classes = int(y_train.max()) + 1
    # Warm-up: compile every kernel (two full batches and a short one, plus evaluate/predict).
    warm = _fastdense_model(args.hidden, classes, args, args.seed)
    n_warm = min(len(x_train), 2 * args.batch_size + 3)
    warm.fit(x_train[:n_warm], y_train[:n_warm], batch_size=args.batch_size, epochs=1,
             verbose=0, seed=args.seed)
    warm.evaluate(x_test, y_test, batch_size=args.batch_size)
    warm.predict(x_test[:5])
    best = np.inf
    for _ in range(args.repeat):
        model = _fastdense_model(args.hidden, classes, args, args.seed)
        t0 = time.perf_counter()
        history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                            verbose=args.verbose, seed=args.seed)
        best = min(best, time.perf_counter() - t0)
    accuracy = float(np.mean(np.argmax(model.predict(x_test), axis=1) == y_test))
    return accuracy, best, history.history["loss"][-1] if args.epochs else float("nan")


def _run_sklearn(data, args) -> tuple[float, float, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x_train, x_test, y_train, y_test = data
    dtype = np.dtype(args.sklearn_dtype)
    x_train = x_train.astype(dtype)
    x_test = x_test.astype(dtype)
    best = np.inf
    for _ in range(args.repeat):
        clf = MLPClassifier(
            hidden_layer_sizes=(args.hidden,), activation="relu", solver="adam", alpha=0.0,
            batch_size=args.batch_size, learning_rate_init=args.learning_rate,
            max_iter=args.epochs, shuffle=True, random_state=args.seed,
            tol=0.0, n_iter_no_change=args.epochs + 1, early_stopping=False,
            beta_1=0.9, beta_2=0.999, epsilon=args.epsilon, verbose=False,
        )
        with warnings.catch_warnings():
            # max_iter is reached on purpose: the epochs are fixed.
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            clf.fit(x_train, y_train)
            best = min(best, time.perf_counter() - t0)
    return float(clf.score(x_test, y_test)), best, float(clf.loss_)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastdense train",
        description="Train a 64-100-10 MLP with Adam on a bundled dataset, with fastdense and "
                    "with scikit-learn's MLPClassifier, and compare accuracy and fit time.",
    )
    p.add_argument("--dataset", choices=_DATASETS, default="digits",
                   help="bundled scikit-learn dataset (default: digits)")
    p.add_argument("--epochs", type=int, default=20, help="epochs for both (default: 20)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of both fits (default: 0)")
    p.add_argument("--hidden", type=int, default=100, help="hidden units (default: 100)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's (default: 1e-3)")
    p.add_argument("--epsilon", type=float, default=1e-7,
                   help="Adam's epsilon for both (default: Keras' 1e-7)")
    p.add_argument("--repeat", type=int, default=1,
                   help="time each fit this many times and keep the fastest (default: 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="fastdense threads (default: Numba's default)")
    p.add_argument("--sklearn-dtype", choices=("float64", "float32"), default="float64",
                   help="dtype of scikit-learn's inputs (default: float64, its native dtype)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=0,
                   help="fastdense progress output during the timed fit (default: 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the exit code (2 for bad arguments)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on errors and on --help
        return int(exc.code or 0)
    for name in ("epochs", "batch_size", "hidden", "repeat"):
        if getattr(args, name) < 1:
            parser.print_usage()
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
            return 2
    if args.seed < 0:
        print(f"error: --seed must be >= 0, got {args.seed}")
        return 2
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("error: the train command needs scikit-learn: pip install 'fastdense[train]'")
        return 1

    from fastdense.threads import get_num_threads, set_num_threads

    if args.threads is not None:
        try:
            set_num_threads(args.threads)
        except ValueError as err:
            print(f"error: --threads: {err}")
            return 2
    data = _load(args.dataset, args.seed)
    fd_acc, fd_time, fd_loss = _run_fastdense(data, args)
    sk_acc, sk_time, sk_loss = _run_sklearn(data, args)

    n_train, n_test = len(data[0]), len(data[1])
    print(f"dataset {args.dataset}: {n_train} train / {n_test} test samples, "
          f"{data[0].shape[1]} features; {data[0].shape[1]}-{args.hidden}-10 MLP, Adam "
          f"(lr={args.learning_rate:g}, betas=0.9/0.999, eps={args.epsilon:g}), "
          f"batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}")
    print(f"fastdense: float32, {get_num_threads()} thread(s), fit time excludes JIT "
          "compilation (warmed up first)" + (f"; best of {args.repeat}" if args.repeat > 1
                                             else ""))
    rows = [
        ("", "test accuracy", "fit time (s)", "final train loss"),
        ("fastdense", f"{fd_acc:.4f}", f"{fd_time:.3f}", f"{fd_loss:.4f}"),
        (f"scikit-learn ({args.sklearn_dtype})", f"{sk_acc:.4f}", f"{sk_time:.3f}",
         f"{sk_loss:.4f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    print(f"accuracy difference (fastdense - scikit-learn): {100 * (fd_acc - sk_acc):+.2f} "
          f"points; speed-up: {sk_time / fd_time:.2f}x")
    return 0
