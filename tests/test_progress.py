"""Progress lines for output that is not a terminal (skelcli.progress)."""

from skelcli.progress import LineProgress, step_progress


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_line_progress_prints_at_every_tenth_and_after_a_silence():
    lines: list[str] = []
    clock = _Clock()
    p = LineProgress("pretrain mae", 100, lines.append, every_s=20.0, clock=clock)
    for step in range(1, 101):
        clock.t = step * 0.1  # 10 s for the whole run
        p.update(completed=step, loss=f"{1 / step:.3f}")
    assert len(lines) == 10
    assert lines[0] == "pretrain mae: 10/100 (10%) loss 0.100, elapsed 0:00:01, ETA 0:00:09"
    assert lines[-1].startswith("pretrain mae: 100/100 (100%) loss 0.010, elapsed 0:00:10, ETA 0:00:00")
    # a slow run: a line after every 20 s of silence even between milestones
    lines.clear()
    clock.t = 0.0
    p = LineProgress("slow", 1000, lines.append, every_s=20.0, clock=clock)
    for step in range(1, 31):
        clock.t = step * 15.0
        p.update(completed=step)
    assert len(lines) == 15 and lines[0].startswith("slow: 2/1000 (0%), elapsed 0:00:30, ETA 4:09:30")


def test_step_progress_chooses_lines_for_a_non_terminal_console():
    class Console:
        is_terminal = False
        printed: list[str] = []

        def print(self, text, **_):
            self.printed.append(text)

    c = Console()
    p = step_progress("x", 10, console=c, fields=("loss",))
    assert isinstance(p, LineProgress)
    for i in range(1, 11):
        p.update(completed=i, loss="1.0")
    p.close()
    assert len(c.printed) == 10 and c.printed[-1].startswith("x: 10/10 (100%) loss 1.0")
