"""The timing loops' behaviour (never speed): block order, call counts, statistics."""

from __future__ import annotations

import itertools

import pytest

from fastdense.bench.timing import (
    Timed,
    Timing,
    calls_per_block,
    run_block,
    time_alternating,
    wait_until_idle,
    warm_up,
)


class FakeClock:
    """A clock that advances by ``cost[name]`` whenever the named fake work runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def recorder(log: list[str], clock: FakeClock, name: str, cost: float) -> Timed:
    def call() -> None:
        log.append(name)
        clock.now += cost

    return Timed(call)


def test_run_block_counts_calls_and_averages() -> None:
    clock, log = FakeClock(), []
    per_call = run_block(recorder(log, clock, "a", 0.5), 4, clock)
    assert log == ["a"] * 4
    assert per_call == pytest.approx(0.5)


def test_run_block_excludes_preparation_from_the_time() -> None:
    clock, events = FakeClock(), []

    def prep() -> None:
        events.append("prep")
        clock.now += 100.0  # expensive, must not be counted

    def block_prep() -> None:
        events.append("block")
        clock.now += 1000.0

    def call() -> None:
        events.append("call")
        clock.now += 1.0

    per_call = run_block(Timed(call, before_call=prep, before_block=block_prep), 3, clock)
    assert per_call == pytest.approx(1.0)
    assert events == ["block"] + ["prep", "call"] * 3


def test_run_block_rejects_empty_blocks() -> None:
    with pytest.raises(ValueError, match="at least one call"):
        run_block(Timed(lambda: None), 0)


@pytest.mark.parametrize(("per_call", "target", "expected"),
                         [(0.01, 0.1, 10), (1.0, 0.1, 1), (1e-9, 0.1, 500), (0.0, 0.1, 500)])
def test_calls_per_block(per_call: float, target: float, expected: int) -> None:
    assert calls_per_block(per_call, target, max_number=500) == expected


def test_warm_up_runs_at_least_min_calls_and_returns_best() -> None:
    clock = FakeClock()
    costs = iter([3.0, 1.0, 2.0, 5.0])

    def call() -> None:
        clock.now += next(costs)

    assert warm_up(Timed(call), min_calls=3, min_time=0.0, clock=clock) == 1.0


def test_blocks_alternate_and_rotate() -> None:
    clock, log = FakeClock(), []
    timeds = {"a": recorder(log, clock, "a", 0.01), "b": recorder(log, clock, "b", 0.02)}
    done: list[str] = []
    result = time_alternating(timeds, blocks=4, block_time=0.1, warmup_calls=1,
                              clock=clock, on_block=done.append, settle=None)
    assert result["a"].number == 10 and result["b"].number == 5
    # Rounds alternate whole blocks, rotating which implementation goes first...
    assert done == ["a", "b", "b", "a", "a", "b", "b", "a"]
    # ...and each block is `number` consecutive calls, never calls interleaved one by one.
    expected = ["a", "b"]  # one warm-up call each comes first
    for name in done:
        expected += [name] * result[name].number
    assert log == expected
    assert all(len(t.block_times) == 4 for t in result.values())


def test_best_is_min_and_not_above_median() -> None:
    clock = FakeClock()
    costs = itertools.cycle([0.3, 0.1, 0.2, 0.5, 0.4])

    def call() -> None:
        clock.now += next(costs)

    result = time_alternating({"x": Timed(call)}, blocks=5, block_time=0.0, warmup_calls=0,
                              clock=clock, settle=None)["x"]
    assert result.number == 1
    assert result.best == min(result.block_times)
    assert result.best <= result.median
    assert Timing(1, [1.0, 3.0, 2.0]).median == 2.0


def test_time_alternating_validates_blocks() -> None:
    with pytest.raises(ValueError, match="blocks"):
        time_alternating({"x": Timed(lambda: None)}, blocks=0, block_time=0.1)


def test_before_block_runs_once_per_block() -> None:
    resets = []
    timed = Timed(lambda: None, before_block=lambda: resets.append(1))
    time_alternating({"x": timed}, blocks=3, block_time=0.0, warmup_calls=1, settle=None)
    assert len(resets) == 1 + 3  # the warm-up starts from the reset state too


def test_settle_runs_before_every_warm_up_and_block() -> None:
    events: list[str] = []
    timeds = {"a": Timed(lambda: events.append("a")), "b": Timed(lambda: events.append("b"))}
    time_alternating(timeds, blocks=2, block_time=0.0, warmup_calls=1,
                     settle=lambda: events.append("settle"))
    assert events == ["settle", "a", "settle", "b",  # warm-ups
                      "settle", "a", "settle", "b",  # round 1
                      "settle", "b", "settle", "a"]  # round 2, rotated


class FakeProcess:
    """Wall and CPU clocks; the CPU clock runs at ``cores[i]`` during the i-th sleep."""

    def __init__(self, cores: list[float]) -> None:
        self.wall = self.cpu = 0.0
        self.cores = cores
        self.sleeps = 0

    def sleep(self, seconds: float) -> None:
        load = self.cores[min(self.sleeps, len(self.cores) - 1)]
        self.wall += seconds
        self.cpu += load * seconds
        self.sleeps += 1


def test_wait_until_idle_waits_for_spinning_threads_to_stop() -> None:
    proc = FakeProcess([1.0, 1.0, 1.0, 0.05])
    waited = wait_until_idle(max_wait=1.0, interval=0.01, clock=lambda: proc.wall,
                             cpu_clock=lambda: proc.cpu, sleep=proc.sleep)
    assert proc.sleeps == 4
    assert waited == pytest.approx(0.04)


def test_wait_until_idle_gives_up_at_max_wait() -> None:
    proc = FakeProcess([2.0])  # never idle
    waited = wait_until_idle(max_wait=0.1, interval=0.01, clock=lambda: proc.wall,
                             cpu_clock=lambda: proc.cpu, sleep=proc.sleep)
    assert 0.1 <= waited <= 0.1 + 0.011  # one interval of float round-off at most
    assert proc.sleeps in (10, 11)
