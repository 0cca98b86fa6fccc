"""Progress of long work, one helper for training and evaluation.

On a terminal: Keras's own progress bar (keras.utils.Progbar) with its estimate of the time left.
Elsewhere (CI, `dvc queue` logs, a pipe; or with VAEPIPE_QUIET=1): plain lines, no `\\r` and no escape
codes (Keras's bar writes both whatever stdout is): one per training epoch, one per ~10 % of each
evaluation part, each with the elapsed time and the time left. Training counts batches, not the
compiled calls (stacks of batches) Keras counts.

An evaluation part whose estimate exceeds LONG_PART_S says so in one line, naming the param that
shortens it. The estimate is `seconds_left` of the time measured after the part's first call (which
also traces and compiles), so it is a pure function the tests call with measured numbers.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from vaepipe.epoch_metrics import EPOCH_TIME

LONG_PART_S = 300.0  # an evaluation part estimated longer than this says so before it goes on


def is_terminal() -> bool:
    """Whether progress goes to a terminal (a bar) rather than to a log (plain lines); VAEPIPE_QUIET=1
    asks for the log's lines on a terminal too. Both Keras's bar and these lines write to stdout."""
    return os.environ.get("VAEPIPE_QUIET") != "1" and sys.stdout.isatty()


def duration(seconds: float) -> str:
    """12s, 3m 05s, 1h 02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def seconds_left(seconds: float, done: float, total: float) -> float:
    """The time the rest of `total` units takes at the measured rate: `seconds` for `done` units."""
    if done <= 0:
        return 0.0
    return seconds / done * max(total - done, 0)


def long_part_warning(part: str, estimate_s: float, why: str, param: str) -> str | None:
    """The line said before an evaluation part estimated at more than LONG_PART_S (None otherwise), e.g.
    `evaluate: the IW NLL will take about 23 min (evaluate.iw_samples=1000 importance samples per image);
    a smaller evaluate.iw_samples shortens it`."""
    if estimate_s <= LONG_PART_S:
        return None
    return (f"evaluate: the {part} will take about {max(1, round(estimate_s / 60))} min ({why}); "
            f"a smaller {param} shortens it")


def _print(line: str) -> None:
    print(line, flush=True)


class PartProgress:
    """One evaluation part's progress, counted in `unit`s (images): call `advance(n)` after each call.

    `why` and `param` go into the long-part warning: what makes the part long and the param that
    shortens it. `terminal`, `clock` and `write` default to the real ones; tests pass their own."""

    def __init__(self, part: str, total: int, unit: str, why: str, param: str, *,
                 terminal: bool | None = None, clock: Callable[[], float] = time.perf_counter,
                 write: Callable[[str], None] = _print):
        self.part, self.total, self.unit, self.why, self.param = part, total, unit, why, param
        self.clock, self.write = clock, write
        self.start = clock()
        self.done = 0.0
        self.calls = 0
        self.after_first: tuple[float, float] | None = None  # (time, done) when the first call ended
        self.next_tenth = 1
        self.bar = None
        if terminal if terminal is not None else is_terminal():
            from keras.utils import Progbar

            write(f"evaluate: {part} ({total} {unit}s)")
            self.bar = Progbar(total, unit_name=unit, verbose=1)

    def advance(self, n: float) -> None:
        now = self.clock()
        self.done += n
        if self.done > self.total - 1e-6:  # fractions of a batch (chunks of draws) add up inexactly
            self.done = float(self.total)
        self.calls += 1
        if self.calls == 1:
            self.after_first = (now, self.done)
        elif self.calls == 2:  # the first call's rate includes tracing: decide on the second's
            warning = long_part_warning(self.part, now - self.start + self.left(now), self.why, self.param)
            if warning:
                self.write(("\n" if self.bar is not None else "") + warning)
        if self.bar is not None:
            self.bar.update(min(int(self.done), self.total))
            return
        tenth = int(10 * self.done / self.total) if self.total else 10
        if tenth >= self.next_tenth or self.done >= self.total:
            self.next_tenth = tenth + 1
            self.write(self.line(now))

    def left(self, now: float) -> float:
        """Seconds left at the rate measured since the first call ended (from the start before that)."""
        if self.after_first is not None and self.done > self.after_first[1]:
            since, done_then = self.after_first
            return seconds_left(now - since, self.done - done_then, self.total - done_then)
        return seconds_left(now - self.start, self.done, self.total)

    def line(self, now: float) -> str:
        done = min(int(self.done), self.total)
        percent = 100 * done // self.total if self.total else 100
        head = f"evaluate: {self.part} {done}/{self.total} {self.unit}s ({percent}%)"
        if self.done >= self.total:
            return f"{head} in {duration(now - self.start)}"
        return f"{head}, {duration(now - self.start)} elapsed, about {duration(self.left(now))} left"


class EpochProgress:
    """Training's progress in batches: per epoch a Keras bar on a terminal, else one plain line per epoch
    (`epoch 3/30: 1563/1563 batches in 2s (1ms/batch), about 45s left; kl=... loss=...`)."""

    def __init__(self, epochs: int, batches: int, *, terminal: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter, write: Callable[[str], None] = _print):
        self.epochs, self.batches = epochs, batches
        self.terminal = terminal if terminal is not None else is_terminal()
        self.clock, self.write = clock, write
        self.epoch_seconds: list[float] = []
        self.bar = None
        self.start = clock()

    def begin(self, epoch: int) -> None:
        self.start = self.clock()
        if self.terminal:
            from keras.utils import Progbar

            self.write(f"Epoch {epoch + 1}/{self.epochs}")
            # Every value shown as given: the epoch's logs are already means.
            self.bar = Progbar(self.batches, unit_name="batch", verbose=1, stateless_metrics=set())

    def update(self, batches_done: int) -> None:
        if self.bar is not None:  # finalized by `end`, with the epoch's metrics
            self.bar.update(batches_done, finalize=False)

    def end(self, epoch: int, logs: dict) -> None:
        seconds = self.clock() - self.start
        self.epoch_seconds.append(seconds)
        values = sorted((key, float(value)) for key, value in logs.items() if key != EPOCH_TIME)
        if self.bar is not None:
            self.bar.update(self.batches, values=values, finalize=True)
            self.bar = None
            return
        # This process's first epoch includes tracing and compiling (seconds, against a fraction of a second
        # per epoch after it): the estimate uses the epochs after it, and waits for one.
        steady = self.epoch_seconds[1:]
        remaining = self.epochs - epoch - 1
        if not remaining:
            left = "done"
        elif steady:
            left = f"about {duration(sum(steady) / len(steady) * remaining)} left"
        else:
            left = "time left estimated after the next epoch (this one included compiling)"
        per_batch = seconds / self.batches if self.batches else 0.0
        rate = f"{per_batch * 1000:.0f}ms/batch" if per_batch >= 1e-3 else f"{per_batch * 1e6:.0f}us/batch"
        self.write(f"epoch {epoch + 1}/{self.epochs}: {self.batches}/{self.batches} batches in {duration(seconds)} "
                   f"({rate}), {left}; " + " ".join(f"{k}={v:.4f}" for k, v in values))
