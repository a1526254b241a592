"""The two test tiers: `make test` runs everything but the ``slow`` tests, `make test-slow` runs those (the
demo-budget pretraining-gain tests), and CI runs both. This fails if a change would let the slow tier
silently drop out of CI, grow beyond the gain tests, or take the MAE gain test out of `make test`."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOW_FILES = {"test_pretraining_gain.py", "test_pretraining_gain_gfp.py", "test_pretraining_gain_slim.py"}


def _recipe(target: str) -> str:
    """The commands of a Makefile target, with the Makefile's own ``NAME := value`` variables expanded."""
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert match, f"no `{target}` target in the Makefile"
    variables = dict(re.findall(r"^([A-Z_]+)\s*:=\s*(.*)$", text, flags=re.M))
    return re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m.group(1), m.group(0)), match.group(1))


def test_make_test_and_test_slow_split_on_the_slow_marker_and_ci_runs_both():
    assert '-m "not slow"' in _recipe("test") and "--durations=15" in _recipe("test")
    assert "-m slow" in _recipe("test-slow") and "--durations=15" in _recipe("test-slow")
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert "make test" in ci and "make test-slow" in ci, ci


def test_only_the_demo_budget_gain_tests_are_slow():
    marked = {p.name for p in (ROOT / "tests").glob("test_*.py") if "mark.slow" in p.read_text() and p.name != Path(__file__).name}
    assert marked == SLOW_FILES
    assert "mark.slow" not in (ROOT / "tests" / "test_pretraining_gain_mae.py").read_text()
