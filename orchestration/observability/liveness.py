"""Whether a modality is still getting work done: the answer behind /readyz and the stuck-records gauge.

A consumer can be connected, assigned and fetching while nothing it took
finishes: a reply topic that never acknowledges, a decode or a model that
hangs, a transaction that keeps aborting. Kafka's own lag does not tell that
apart from a busy service. What does is time since records last finished
(were durably answered) while others wait. The clock starts when work is
waiting, so an idle service is never "stalled".
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """The batches of one modality in flight, and when the last one finished."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiting: dict[int, tuple[float, int]] = {}  # token -> (started, records)
        self._next = 0
        self.last_finished = clock()

    def started(self, records: int) -> int:
        """A batch was taken; the token identifies it to ``finished`` or ``dropped``."""
        now = self._clock()
        if not self._waiting:
            self.last_finished = now  # idle until now: the wait starts here
        self._next += 1
        self._waiting[self._next] = (now, records)
        return self._next

    def finished(self, token: int) -> None:
        """A batch's answers are durable (and its offsets committed or committable)."""
        if self._waiting.pop(token, None) is not None:
            self.last_finished = self._clock()

    def dropped(self, token: int) -> None:
        """A batch left flight without being answered (rewound, cancelled at shutdown)."""
        self._waiting.pop(token, None)

    def drop_all(self) -> None:
        """Every batch left flight unanswered (exactly-once rewound to the committed offsets)."""
        self._waiting.clear()

    def stalled_s(self) -> float:
        """Seconds without a finished batch while batches wait; 0 when nothing waits."""
        if not self._waiting:
            return 0.0
        return self._clock() - self.last_finished

    def stuck(self, older_than_s: float) -> int:
        """Records of batches taken more than ``older_than_s`` ago and not finished."""
        cutoff = self._clock() - older_than_s
        return sum(n for started, n in self._waiting.values() if started <= cutoff)
