"""The training progress bar's total when a run has two limits (issue 11, item 11).

With ``train.minutes`` set, the run ends at ``train.steps`` or when the time budget is spent,
whichever comes first. :class:`BudgetBar` keeps a tqdm bar's total at the step the run is
expected to end at (the steps reachable at the measured rate in the remaining time, capped at
``train.steps``), so the bar's percentage and ETA describe the real end of the run.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional


def expected_last_step(steps: int, minutes: Optional[float], first_step: int, done: int, elapsed: float) -> int:
    """The step a run started at ``first_step`` is expected to stop at, having made ``done`` steps
    in ``elapsed`` seconds: ``steps``, or earlier when the ``minutes`` budget runs out first."""
    if minutes is None or done <= 0 or elapsed <= 0:
        return steps
    remaining = max(0.0, 60.0 * minutes - elapsed)
    by_time = first_step + done + math.ceil(done / elapsed * remaining)
    return min(steps, by_time)


class BudgetBar:
    """Wraps a tqdm bar; ``update(n)`` also moves its total to :func:`expected_last_step` (at most
    once a second). Other attributes are the bar's."""

    def __init__(self, bar, steps: int, minutes: Optional[float], clock: Callable[[], float] = time.time) -> None:
        self.bar, self.steps, self.minutes, self.clock = bar, steps, minutes, clock
        self.first_step = int(bar.n)
        self.start = clock()
        self.done = 0
        self._last_refresh = -math.inf

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.minutes is not None:
            now = self.clock()
            if now - self._last_refresh >= 1.0:
                self._last_refresh = now
                total = expected_last_step(self.steps, self.minutes, self.first_step, self.done, now - self.start)
                if total != self.bar.total:
                    self.bar.total = total
                    self.bar.refresh()
        self.bar.update(n)

    def __getattr__(self, name):
        return getattr(self.bar, name)
