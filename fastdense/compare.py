"""``python -m fastdense train``: train on a bundled dataset beside scikit-learn's MLP.

Both sides get the same data (scikit-learn's bundled ``load_digits``: no download), the same
standardization and fixed stratified train/test split, the same architecture (64 -> hidden relu
-> 10 softmax), the same Adam settings (learning rate, betas, *and* epsilon: Keras' 1e-7 is
passed to scikit-learn, whose default is 1e-8), the same batch size, the same number of epochs
(scikit-learn's early stopping is disabled: ``tol=0``, ``n_iter_no_change > epochs``), a
reshuffle every epoch on both sides, no L2 penalty (``alpha=0``) and the same dtype (float32
by default; ``--sklearn-dtype float64`` gives scikit-learn its native dtype).

Timing is made fair and reproducible:

* fit times exclude fastdense's JIT compilation: a throw-away model is trained first on a few
  batches, which compiles (or loads from Numba's cache) every kernel the timed fit uses;
* both libraries run on the same number of threads (``--threads``, default 1): fastdense
  through :func:`fastdense.set_num_threads`, scikit-learn by limiting its BLAS and OpenMP pools
  with threadpoolctl (a scikit-learn dependency);
* each fit is repeated ``--repeat`` times, alternating the two libraries so that a change of
  machine load hits both alike, and the fastest of each is reported (as ``timeit`` does);
* the machine's load average is printed before and after, since on a shared machine it
  explains most of the run-to-run spread.

The result table is Markdown, ready to paste into the README.
"""

from __future__ import annotations

import argparse
import os
import platform
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
    model.compile(Adam(args.learning_rate, beta_1=args.beta_1, beta_2=args.beta_2,
                       epsilon=args.epsilon),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class _Fastdense:
    """One library's side of the comparison: ``fit_once`` (timed) and ``result``."""

    name = "fastdense"

    def __init__(self, data, args: argparse.Namespace) -> None:
        x_train, x_test, y_train, y_test = data
        self.args = args
        self.x_train = x_train.astype(np.float32)
        self.x_test = x_test.astype(np.float32)
        self.y_train, self.y_test = y_train, y_test
        self.classes = int(y_train.max()) + 1
        self.dtype = "float32"
        self.model: Any = None
        self.history: Any = None

    def warm_up(self) -> None:
        """Compile every kernel: two full batches and a short one, evaluate and predict."""
        args = self.args
        warm = _fastdense_model(args.hidden, self.classes, args, args.seed)
        n_warm = min(len(self.x_train), 2 * args.batch_size + 3)
        warm.fit(self.x_train[:n_warm], self.y_train[:n_warm], batch_size=args.batch_size,
                 epochs=1, verbose=0, seed=args.seed)
        warm.evaluate(self.x_test, self.y_test, batch_size=args.batch_size)
        warm.predict(self.x_test[:5])

    def fit_once(self) -> float:
        args = self.args
        model = _fastdense_model(args.hidden, self.classes, args, args.seed)
        t0 = time.perf_counter()
        history = model.fit(self.x_train, self.y_train, batch_size=args.batch_size,
                            epochs=args.epochs, verbose=args.verbose, seed=args.seed)
        elapsed = time.perf_counter() - t0
        self.model, self.history = model, history
        return elapsed

    def result(self) -> tuple[float, float]:
        """(test accuracy, final training loss) of the last fit."""
        accuracy = float(np.mean(np.argmax(self.model.predict(self.x_test), axis=1)
                                 == self.y_test))
        return accuracy, float(self.history.history["loss"][-1])


class _Sklearn:
    name = "scikit-learn"

    def __init__(self, data, args: argparse.Namespace) -> None:
        x_train, x_test, y_train, y_test = data
        self.args = args
        self.dtype = args.sklearn_dtype
        self.x_train = x_train.astype(self.dtype)
        self.x_test = x_test.astype(self.dtype)
        self.y_train, self.y_test = y_train, y_test
        self.clf: Any = None

    def warm_up(self) -> None:
        """One short fit, so that imports and first-call costs stay out of the timing."""
        self._fit(self._make(max_iter=1))

    def _make(self, max_iter: int) -> Any:
        from sklearn.neural_network import MLPClassifier

        args = self.args
        return MLPClassifier(
            hidden_layer_sizes=(args.hidden,), activation="relu", solver="adam", alpha=0.0,
            batch_size=args.batch_size, learning_rate_init=args.learning_rate,
            max_iter=max_iter, shuffle=True, random_state=args.seed,
            tol=0.0, n_iter_no_change=max_iter + 1, early_stopping=False,
            beta_1=args.beta_1, beta_2=args.beta_2, epsilon=args.epsilon, verbose=False,
        )

    def _fit(self, clf: Any) -> float:
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            # max_iter is reached on purpose: the epochs are fixed.
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            clf.fit(self.x_train, self.y_train)
            return time.perf_counter() - t0

    def fit_once(self) -> float:
        self.clf = self._make(self.args.epochs)
        return self._fit(self.clf)

    def result(self) -> tuple[float, float]:
        return float(self.clf.score(self.x_test, self.y_test)), float(self.clf.loss_)


def _load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        return "n/a"


def _table(rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    """A Markdown table with aligned columns (readable as text too)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) \
            + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                          for i, w in enumerate(widths)) + "|"
    return [line(rows[0]), rule, *(line(r) for r in rows[1:])]


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
    p.add_argument("--beta-1", type=float, default=0.9, help="Adam's beta_1 (default: 0.9)")
    p.add_argument("--beta-2", type=float, default=0.999,
                   help="Adam's beta_2 (default: 0.999)")
    p.add_argument("--epsilon", type=float, default=1e-7,
                   help="Adam's epsilon for both (default: Keras' 1e-7)")
    p.add_argument("--repeat", type=int, default=5,
                   help="time each fit this many times, alternating the libraries, and keep "
                        "the fastest (default: 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for both: fastdense's kernels and scikit-learn's BLAS/OpenMP "
                        "(default: 1)")
    p.add_argument("--sklearn-dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of scikit-learn's inputs (default: float32, fastdense's)")
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
    for name in ("epochs", "batch_size", "hidden", "repeat", "threads"):
        if getattr(args, name) < 1:
            parser.print_usage()
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
            return 2
    if args.seed < 0:
        print(f"error: --seed must be >= 0, got {args.seed}")
        return 2
    from fastdense.optimizers import Adam

    try:  # the optimizer's own checks
        Adam(args.learning_rate, beta_1=args.beta_1, beta_2=args.beta_2, epsilon=args.epsilon)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    if args.epsilon <= 0.0:  # scikit-learn needs a positive epsilon
        print(f"error: --epsilon must be > 0, got {args.epsilon:g}")
        return 2
    try:
        import sklearn
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("error: the train command needs scikit-learn: pip install 'fastdense[train]'")
        return 1

    from fastdense.threads import get_num_threads, threads

    try:
        with threads(args.threads):
            pass
    except ValueError as err:
        print(f"error: --threads: {err}")
        return 2

    load_before = _load_average()
    data = _load(args.dataset, args.seed)
    sides = [_Fastdense(data, args), _Sklearn(data, args)]
    best = {side.name: np.inf for side in sides}
    with threads(args.threads), threadpool_limits(limits=args.threads):
        for side in sides:
            side.warm_up()
        for _ in range(args.repeat):
            for side in sides:
                best[side.name] = min(best[side.name], side.fit_once())
        n_threads = get_num_threads()
    load_after = _load_average()
    (fd_acc, fd_loss), (sk_acc, sk_loss) = (side.result() for side in sides)
    fd_time, sk_time = best["fastdense"], best["scikit-learn"]

    n_train, n_test = len(data[0]), len(data[1])
    n_features = data[0].shape[1]
    print(f"dataset {args.dataset}: {n_train} train / {n_test} test samples, {n_features} "
          f"features; {n_features}-{args.hidden}-10 MLP (relu, softmax), Adam "
          f"(lr={args.learning_rate:g}, betas={args.beta_1:g}/{args.beta_2:g}, "
          f"eps={args.epsilon:g}) on both, batch {args.batch_size}, {args.epochs} epochs, "
          f"reshuffled every epoch, no early stopping, seed {args.seed}")
    print(f"timing: best of {args.repeat} alternating fits per library, {n_threads} "
          f"thread(s) each; fastdense's fit time excludes JIT compilation (warmed up first)")
    print(f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python "
          f"{platform.python_version()}; load average (1/5/15 min) {load_before} before, "
          f"{load_after} after")
    print()
    import fastdense

    rows = [
        ("library", "dtype", "test accuracy", "fit time (s)", "final train loss"),
        (f"fastdense {fastdense.__version__}", sides[0].dtype, f"{fd_acc:.4f}",
         f"{fd_time:.3f}", f"{fd_loss:.4f}"),
        (f"scikit-learn {sklearn.__version__}", sides[1].dtype, f"{sk_acc:.4f}",
         f"{sk_time:.3f}", f"{sk_loss:.4f}"),
    ]
    for line in _table(rows, right={2, 3, 4}):
        print(line)
    print()
    print(f"accuracy difference (fastdense - scikit-learn): {100 * (fd_acc - sk_acc):+.2f} "
          f"points; speed-up: {sk_time / fd_time:.2f}x")
    return 0
