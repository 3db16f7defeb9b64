"""Progress bars with ETA (tqdm, drawn by the driver) for the long waits of a run: generation in the engines, entropy
scoring in the reference, SFT and GRPO steps.

``trainer.progress``: ``auto`` (on when the driver's stderr is a terminal, off in logs and CI), ``true`` or ``false``.
Workers never draw: an engine or the reference reports how far it is to the run's progress board
(``workers/board.py``, through ``stepentropy_rl.progress_report``) and the driver polls the board while it waits.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import ray

_board = None  # the run's progress board (workers/board.py) while bars are on (``start``)


def wanted(setting: str | bool) -> bool:
    """``auto`` -> whether stderr is a terminal."""
    if isinstance(setting, bool):
        return setting
    return sys.stderr.isatty() if setting == "auto" else setting == "true"


def start(setting: str | bool) -> None:
    """Turn bars on for this driver process (after ``ray.init``) when ``setting`` wants them."""
    from stepentropy_rl.driver.roles import spawn_board

    global _board
    _board = spawn_board() if wanted(setting) else None


def stop() -> None:
    global _board
    _board = None


def board():
    """The board handle workers report to, or None when bars are off."""
    return _board


def bar(total: int, desc: str, unit: str = "it", initial: int = 0):
    """A driver-side tqdm (a silent one when bars are off) starting at ``initial`` (a resumed loop); log lines go
    above it (``logs_above_bars``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=_board is None, dynamic_ncols=True,
                leave=False)


@contextlib.contextmanager
def logs_above_bars() -> Iterator[None]:
    """Route the driver's log lines through tqdm so that they do not tear the bars."""
    if _board is None:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield


def wait(refs: list, keys: list[str], desc: str, total: int, unit: str) -> None:
    """Block until every ref is ready, drawing the progress the workers report under ``keys`` (no-op when off). A
    board that died (it has no restarts) turns the bars off: a progress bar must not stop a run."""
    if _board is None or not refs:
        return
    with bar(total, desc, unit) as b:
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            try:
                done = ray.get(_board.read.remote(keys))
            except ray.exceptions.RayActorError:
                stop()
                ray.wait(pending, num_returns=len(pending))
                return
            b.update(max(0, min(total, done) - b.n))
