"""Drivers: the pipelines and the loops (study, prune, SFT, GRPO, eval), and the only code that touches actors.

A pipeline is a function of a prepared :class:`~stepentropy_rl.driver.run.Job`, registered under its config name
(``pipeline: NAME``) with :func:`register_pipeline`; ``driver.run.run`` is the one entry that prepares the job,
starts Ray and calls it.
"""
from __future__ import annotations

from stepentropy_rl.registry import Registry

PIPELINES = Registry("pipeline")  # name -> pipeline(job) -> None


def register_pipeline(name: str, train_data: bool = False):
    """Register ``fn(job)`` as pipeline ``name``; ``train_data``: the job loads the training problems too."""
    def deco(fn):
        fn.train_data = train_data
        return PIPELINES.register(name)(fn)
    return deco
