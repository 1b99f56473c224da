"""One retry delay for every loop that waits before trying again, with jitter.

After a central-store outage a whole fleet retries; without jitter every agent that
failed at the same moment retries at the same moments, doubling in lockstep, and the
store that just came back takes the whole fleet at once. Each delay is drawn from
`[base * (1 - jitter), base]`, where `base` doubles from `initial` up to `maximum`, so
the retries of many hosts spread out while each host's waits still grow. Used by the
store writer, the forwarder, the incident log, the rescans and thread supervision.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """`next()` gives the next wait in seconds; `reset()` after a success."""

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if not 0 <= jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rng = rng
        self._base = 0.0
        self.failures = 0

    def next(self) -> float:
        """The wait before the next try; each call counts one more failure."""
        grown = min(self._base * self.factor, self.maximum)
        self._base = self.initial if self._base == 0 else grown
        self.failures += 1
        return self._base * (1.0 - self.jitter * self._rng())

    @property
    def current(self) -> float:
        """The undelayed base of the last wait (0 before the first failure)."""
        return self._base

    def reset(self) -> None:
        self._base = 0.0
        self.failures = 0
