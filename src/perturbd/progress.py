"""How the library reports progress to its caller: lines (:data:`Log`) and stages (:class:`Monitor`).

- A ``Log`` is a function that takes one line: what happened (the attack settings, the defence
  harness). The command line passes a function that prints; a library caller may pass ``print``,
  a list's ``append`` or nothing.
- A :class:`Monitor` follows long work as it goes: a *stage* of a known number of steps starts,
  advances step by step and stops (a model's training, the adaptive mask's passes, Neural
  Cleanse's epochs, STRIP's blends, a sweep's runs). Stages nest: a stage started inside another
  (a mitigation's training inside its defence) stops before it.

Library code reports to the monitor it is given, or else to the *active* one, set for a block of
code with :func:`watching` (a context variable: the command line sets it once around a command,
and every stage inside reports there, however deep). With none active nothing is shown
(:class:`SilentMonitor`). :func:`stage` is how library code opens a stage of its own.

The command line shows stages as rich progress bars on a terminal
(:class:`perturbd.report.console.RichMonitor`) and, when its output is not a terminal (a pipe,
a log file), as lines of text (:class:`LineMonitor`): one when a stage starts, one when it ends,
and in between at most one every ten seconds with the steps done, the time elapsed and an
estimate of the time left.

This module imports neither torch nor rich.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")

Log = Callable[[str], None]
"""Takes one line of progress (no trailing newline); its return value is ignored."""


class Monitor(Protocol):
    """Receives the progress of long work, one stage at a time (stages nest; see the module docstring).

    ``start`` opens a stage of ``total_steps`` steps, described in a few words; ``step`` says one
    more step is done (``images``: the images it took, 0 where that means nothing); ``epoch``
    tells how a training epoch went (trainings only); ``stop`` closes the innermost stage, done or
    not (a stage may stop early: Neural Cleanse's early stop, the mask's target fooling rate
    reached, an error). The command line shows it as a rich progress bar or as lines of text.
    """

    def start(self, description: str, total_steps: int) -> None: ...
    def step(self, images: int) -> None: ...
    def epoch(self, epoch: int, loss: float, images_per_s: float) -> None: ...
    def stop(self) -> None: ...


class SilentMonitor:
    """Shows nothing: the monitor where none is given or active."""

    def start(self, description: str, total_steps: int) -> None: ...
    def step(self, images: int) -> None: ...
    def epoch(self, epoch: int, loss: float, images_per_s: float) -> None: ...
    def stop(self) -> None: ...


_ACTIVE: ContextVar[Monitor | None] = ContextVar("perturbd_monitor", default=None)


def current() -> Monitor:
    """The active monitor (:func:`watching`), or a :class:`SilentMonitor` when none is."""
    return _ACTIVE.get() or SilentMonitor()


@contextmanager
def watching(monitor: Monitor | None) -> Iterator[Monitor]:
    """Make ``monitor`` the active one inside the block (``None``: keep the one active now), so
    that every stage started there, at any depth, reports to it.

    Example:
        >>> from perturbd.progress import LineMonitor, stage, watching
        >>> lines = []
        >>> with watching(LineMonitor(lines.append)), stage("count", 3) as s:
        ...     s.advance(3)
        >>> lines[0], lines[-1].split(" in ")[0]
        ('count: started, 3 steps', 'count: done, 3/3 steps')
    """
    token = _ACTIVE.set(monitor if monitor is not None else _ACTIVE.get())
    try:
        yield current()
    finally:
        _ACTIVE.reset(token)


class Stage:
    """An open stage of a monitor (what :func:`stage` yields)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def advance(self, steps: int = 1, images: int = 0) -> None:
        """``steps`` more steps done (``images``: the images the last one took)."""
        for i in range(steps):
            self.monitor.step(images if i == steps - 1 else 0)

    def over(self, items: Iterable[T]) -> Iterator[T]:
        """``items`` one by one, a step done each time a loop over them finishes one (its body
        run to the end or left by ``continue``)."""
        for item in items:
            yield item
            self.monitor.step(0)


@contextmanager
def stage(description: str, total_steps: int, monitor: Monitor | None = None) -> Iterator[Stage]:
    """A stage of ``total_steps`` steps on ``monitor`` (default: the active one, :func:`current`),
    stopped when the block ends, normally or by an error, so that stages stay nested."""
    m = monitor if monitor is not None else current()
    m.start(description, total_steps)
    try:
        yield Stage(m)
    finally:
        m.stop()


def now() -> float:
    """Seconds from an arbitrary origin (``time.monotonic``): the clock of every :class:`LineMonitor`
    not given its own (a test replaces it to make time pass)."""
    return time.monotonic()


def duration(seconds: float) -> str:
    """``"8 s"``, ``"2 min 05 s"``, ``"1 h 03 min"``: a time span for a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@dataclass
class _Open:
    description: str
    total: int
    started: float
    done: int = 0
    info: str = ""


class LineMonitor:
    """Progress as lines of text, for a pipe or a log file, where a live progress bar cannot be drawn.

    One line when a stage starts (``backdoored: started, 400 steps``) and one when it stops
    (``backdoored: done, 400/400 steps in 45 s · epoch 10, loss 0.052, 5,120 img/s``; ``stopped
    at 120/400 steps after 12 s`` for a stage that ended early); in between, at most one line
    every ``every`` seconds, written when a step ends::

        sweep 3/10 › backdoored: 120/400 steps (30 %) · 12 s elapsed · about 28 s left · epoch 3, loss 0.412, 5,310 img/s

    The moving stage is the innermost, named after the stages it runs in with their steps done.
    The time left is estimated from the pace so far (steps are assumed to take equally long);
    a stage that can stop early (Neural Cleanse, the adaptive mask) may take less.

    Args:
        write: takes one line (``print``, a list's ``append``, a console's ``print``).
        every: least seconds between two progress lines (start and stop lines are always written).
        clock: seconds from any origin (default: :func:`now`); a test passes a fake one.
    """

    def __init__(self, write: Log, *, every: float = 10.0, clock: Callable[[], float] | None = None) -> None:
        self.write, self.every = write, every
        self.clock = clock if clock is not None else lambda: now()  # looked up at each call: a test may replace now
        self.open: list[_Open] = []
        self.last = -math.inf

    def start(self, description: str, total_steps: int) -> None:
        now = self.clock()
        self.open.append(_Open(description, max(0, int(total_steps)), now))
        self._write(f"{self._name()}: started, {total_steps:,} step{'' if total_steps == 1 else 's'}", now)

    def step(self, images: int) -> None:
        if not self.open:
            return
        top = self.open[-1]
        top.done += 1
        now = self.clock()
        if now - self.last >= self.every:
            self._write(self.line(now), now)

    def epoch(self, epoch: int, loss: float, images_per_s: float) -> None:
        if self.open:
            self.open[-1].info = f"epoch {epoch}, loss {loss:.3f}, {images_per_s:,.0f} img/s"

    def stop(self) -> None:
        if not self.open:
            return
        now = self.clock()
        name, top = self._name(), self.open.pop()
        spent = duration(now - top.started)
        if top.done >= top.total:
            text = f"{name}: done, {top.done:,}/{top.total:,} steps in {spent}"
        else:
            text = f"{name}: stopped at {top.done:,}/{top.total:,} steps after {spent}"
        self._write(text + (f" · {top.info}" if top.info else ""), now)

    def line(self, now: float) -> str:
        """The progress line of the innermost stage at time ``now``."""
        top = self.open[-1]
        elapsed = now - top.started
        parts = [f"{self._name()}: {top.done:,}/{top.total:,} steps"]
        if top.total:
            parts[0] += f" ({100 * top.done / top.total:.0f} %)"
        parts.append(f"{duration(elapsed)} elapsed")
        if 0 < top.done < top.total:
            parts.append(f"about {duration(elapsed / top.done * (top.total - top.done))} left")
        if top.info:
            parts.append(top.info)
        return " · ".join(parts)

    def _name(self) -> str:
        outer = [f"{s.description} {s.done}/{s.total}" for s in self.open[:-1]]
        return " › ".join([*outer, self.open[-1].description])

    def _write(self, text: str, now: float) -> None:
        self.write(text)
        self.last = now
