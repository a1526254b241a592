"""Progress reporting that works on a terminal and in a log file alike.

A rich progress bar redraws one line in place; written to a file or a pipe (``make demo > log``,
CI, a parallel worker) it shows nothing until the very end. :func:`step_progress` therefore returns
a rich bar on an interactive console and a :class:`LineProgress` otherwise, which prints one plain
line every ``every_s`` seconds and at every 10 % of the work. Both have ``update(completed, **fields)``
and ``close()``.
"""

from __future__ import annotations

import time
from typing import Any, Callable


def _clock(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def format_duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.4 h`` or ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def projection_line(device: Any, per_step: float, remaining: int, hint: str = "on a CPU-only machine try --preset small") -> str | None:
    """On a CPU, the projected run time once the first steps are timed (runs over 30 minutes get ``hint``);
    None on an accelerator, where the progress bar's ETA is enough."""
    if getattr(device, "type", str(device)) != "cpu":
        return None
    total = per_step * remaining
    line = f"projected: {format_duration(total)} for the remaining {remaining} steps ({per_step:.2f} s/step on the CPU)"
    return f"{line}; {hint}" if total > 1800 else line


class Projector:
    """Says :func:`projection_line` once, after 20 steps or after 3 steps taking over 10 s, whichever is first.

    ``after(step)`` is called with the global step just finished; it returns the line once, else None.
    """

    def __init__(self, device: Any, total_steps: int, start_step: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.device, self.total, self.start, self.clock = device, int(total_steps), int(start_step), clock
        self.t0 = clock()
        self.done = False

    def after(self, step: int) -> str | None:
        n, spent = step - self.start, self.clock() - self.t0
        if self.done or not (n >= 20 or (n >= 3 and spent > 10)):
            return None
        self.done = True
        return projection_line(self.device, spent / n, self.total - step)


def eta_seconds(elapsed: float, done: int, remaining: int) -> float:
    """Remaining time from the mean rate since the start (NaN before the first unit is done)."""
    return elapsed / done * remaining if done > 0 else float("nan")


class LineProgress:
    """One line per ``every_s`` seconds or per ``1 / milestones`` of ``total``, whichever comes first.

    Each line: ``<description>: <done>/<total> (<pct>%) <field> <value> ... elapsed H:MM:SS, ETA H:MM:SS``;
    the ETA extrapolates the rate since the first update.
    """

    def __init__(self, description: str, total: int, emit: Callable[[str], None], *, completed: int = 0,
                 every_s: float = 20.0, milestones: int = 10, clock: Callable[[], float] = time.perf_counter) -> None:
        self.description, self.total, self.emit = description, max(int(total), 1), emit
        self.every_s, self.milestones, self.clock = every_s, max(int(milestones), 1), clock
        self.start_completed = self.completed = int(completed)
        self.fields: dict[str, Any] = {}
        self.t0 = self.last_t = clock()
        self.last_milestone = self._milestone(self.completed)

    def _milestone(self, done: int) -> int:
        return done * self.milestones // self.total

    def update(self, completed: int | None = None, **fields: Any) -> None:
        self.fields.update(fields)
        if completed is None:
            return
        self.completed = int(completed)
        now = self.clock()
        milestone = self._milestone(self.completed)
        if milestone > self.last_milestone or now - self.last_t >= self.every_s:
            self.last_milestone, self.last_t = milestone, now
            self.emit(self.line(now))

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = now - self.t0
        done = self.completed - self.start_completed
        eta = eta_seconds(elapsed, done, self.total - self.completed)
        extra = "".join(f" {k} {v}" for k, v in self.fields.items() if v not in (None, "-"))
        pct = 100.0 * self.completed / self.total
        eta_s = _clock(eta) if eta == eta else "?"
        return f"{self.description}: {self.completed}/{self.total} ({pct:.0f}%){extra}, elapsed {_clock(elapsed)}, ETA {eta_s}"

    def close(self) -> None:
        pass


class _RichBar:
    """The rich bar behind the same two calls. Its ETA is the mean rate since the start (rich's own
    column needs a 30-second speed window and reads -:--:-- for the first minutes of slow steps)."""

    def __init__(self, description: str, total: int, completed: int, console: Any, fields: dict[str, str]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
        columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
        columns += [TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}")]
        self.bar = Progress(*columns, console=console, transient=False)
        self.start_completed, self.total, self.t0 = completed, max(int(total), 1), time.perf_counter()
        self.task = self.bar.add_task(description, total=total, completed=completed, eta="?", **fields)
        self.bar.start()

    def update(self, completed: int | None = None, **fields: Any) -> None:
        kw: dict[str, Any] = dict(fields)
        if completed is not None:
            kw["completed"] = completed
            eta = eta_seconds(time.perf_counter() - self.t0, completed - self.start_completed, self.total - completed)
            kw["eta"] = _clock(eta) if eta == eta else "?"
        self.bar.update(self.task, **kw)

    def close(self) -> None:
        self.bar.stop()


def step_progress(description: str, total: int, *, completed: int = 0, console: Any = None, fields: tuple[str, ...] = (),
                  lines: bool | None = None):
    """A progress reporter: a rich bar when ``console`` is an interactive terminal (and ``lines`` is not
    True), else :class:`LineProgress` printing through ``console`` (plain ``print`` when None)."""
    if console is None:
        from rich.console import Console

        console = Console()
    if lines is None:
        lines = not console.is_terminal
    if lines:
        return LineProgress(description, total, lambda text: console.print(text, highlight=False, markup=False, soft_wrap=True),
                            completed=completed)
    return _RichBar(description, total, completed, console, {name: "-" for name in fields})
