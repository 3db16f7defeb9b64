"""The run's progress board: counters that engines and the reference write and the driver reads to draw its bars
(``stepentropy_rl/driver/progress.py``)."""
from __future__ import annotations

import ray


class ProgressBoard:
    """``key -> done``; a worker reports under its own key, the driver sums the keys of one wait."""

    def __init__(self):
        self.done: dict[str, int] = {}

    def report(self, key: str, done: int) -> None:
        self.done[key] = done

    def read(self, keys: list[str]) -> int:
        return sum(self.done.get(k, 0) for k in keys)


BoardWorker = ray.remote(ProgressBoard)
