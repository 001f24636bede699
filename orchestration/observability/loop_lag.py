"""How long the event loop was blocked: the one number every stall on it shows up in.

Everything altlas does for every request (fetching, reading Avro, batching,
publishing, committing) runs on one event loop; CPU work that belongs on a
thread or in a process and slips onto the loop (a decode, a task detection, a
huge grammar) stalls every modality at once. A sleeper that asks to wake every
``interval_s`` measures how late it woke: that lateness is how long something
held the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class LoopLag:
    """Samples the loop's lateness; keeps the worst of a recent window and of the whole run."""

    def __init__(
        self,
        observe: Callable[[float], None] | None = None,
        *,
        interval_s: float = 0.05,
        window_s: float = 5.0,
    ) -> None:
        self.observe = observe
        self.interval_s = interval_s
        self.window_s = window_s
        self.worst_s = 0.0
        self._recent: deque[tuple[float, float]] = deque()  # (when, lateness), lateness decreasing

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: sleep, and record how much later than asked the loop woke."""
        while not stop.is_set():
            asked = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            self.record(max(0.0, time.perf_counter() - asked - self.interval_s))

    def record(self, lateness: float, now: float | None = None) -> None:
        """One sample (a sliding-window maximum: a deque kept in decreasing order)."""
        now = time.monotonic() if now is None else now
        self.worst_s = max(self.worst_s, lateness)
        while self._recent and self._recent[-1][1] <= lateness:
            self._recent.pop()
        self._recent.append((now, lateness))
        if self.observe is not None:
            self.observe(lateness)

    def recent_max(self, now: float | None = None) -> float:
        """The worst lateness within the last ``window_s`` seconds."""
        now = time.monotonic() if now is None else now
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()
        return self._recent[0][1] if self._recent else 0.0
