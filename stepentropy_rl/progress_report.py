"""The workers' side of the driver's progress bars (``driver/progress.py``): count what is done and tell the run's
progress board (an actor, ``workers/board.py``) at most every ``every_s`` seconds, fire-and-forget. Counting only
observes: what is generated and in which order does not change with it."""
from __future__ import annotations

import time
from typing import Any


class Reporter:
    """A worker's side: ``update(n)`` counts, and every ``every_s`` seconds (and at ``close``) tells the board."""

    def __init__(self, target: tuple | None, every_s: float = 0.5):
        self.board, self.key = target if target else (None, None)
        self.n, self.every_s, self.last = 0, every_s, 0.0
        self._tell()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every_s:
            self._tell()

    def close(self) -> None:
        self._tell()

    def _tell(self) -> None:
        self.last = time.monotonic()
        if self.board is not None:
            self.board.report.remote(self.key, self.n)


class _VllmBar:
    """What ``vllm.LLM`` calls on the bar it makes through ``use_tqdm`` (``_run_engine``), counted by a Reporter."""

    def __init__(self, reporter: Reporter):
        self.reporter, self.t0, self.postfix = reporter, time.monotonic(), ""

    @property
    def n(self) -> int:
        return self.reporter.n

    @property
    def format_dict(self) -> dict[str, Any]:
        return {"elapsed": max(1e-6, time.monotonic() - self.t0)}

    def update(self, n: int = 1) -> None:
        self.reporter.update(n)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        self.reporter.close()


def vllm_bar(target: tuple | None):
    """A ``use_tqdm`` callable for ``vllm.LLM.generate`` that reports finished samples to ``target`` (board, key);
    the request-adding pass (an iterable) goes through untouched."""
    def make(iterable=None, **_):
        return iterable if iterable is not None else _VllmBar(Reporter(target))
    return make
