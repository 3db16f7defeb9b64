"""Fault injection for the fault harnesses: a GRPO step hook that kills an actor or the driver on cue.

Configured by ``trainer.grpo.kill_at_step`` ({role: step}; roles ``rollout`` (engine 0), ``reference``, ``reward``,
``learner`` (the last rank)) and ``trainer.grpo.crash_after_step`` (null = off) and attached by the training pipeline
as a hook, so the training step itself has no fault branches.
"""
from __future__ import annotations

import logging
import os
import signal

import psutil
import ray

from stepentropy_rl.config import GRPOConfig

ROLES = ("rollout", "reference", "reward", "learner")
log = logging.getLogger(__name__)


def die_at(point: str) -> None:
    """SIGKILL this process if ``STEPENTROPY_DIE_AT`` names ``point``: the kill harness's moments inside a stage
    (``scripts/kill_harness.py``), where its work is done or its files half written but it is not marked done."""
    if os.environ.get("STEPENTROPY_DIE_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _pid(_actor) -> int:
    return os.getpid()


def crash(actor, timeout_s: float = 60.0) -> None:
    """SIGKILL ``actor``'s process, as ``kill -9`` would, and wait until it is gone (``ray.kill`` returns before the
    actor dies, so a call right after it may still reach the old process). The actor must run on this node."""
    pid = ray.get(actor.__ray_call__.remote(_pid))
    os.kill(pid, signal.SIGKILL)
    try:
        psutil.Process(pid).wait(timeout_s)
    except psutil.NoSuchProcess:
        pass


class FaultInjection:
    """``kill_at_step``: kill that role's actor, as a crash would, before that step's generation; ``crash_after_step``:
    end the driver once that many steps are done (and checkpointed if due)."""

    def __init__(self, kill_at_step: dict | None = None, crash_after_step: int | None = None):
        self.kill_at, self.crash_after = dict(kill_at_step or {}), crash_after_step
        unknown = set(self.kill_at) - set(ROLES)
        if unknown:
            raise ValueError(f"trainer.grpo.kill_at_step: unknown roles {sorted(unknown)}; roles: {list(ROLES)}")

    @classmethod
    def from_config(cls, grpo: GRPOConfig) -> "FaultInjection | None":
        kill, crash = grpo.kill_at_step, grpo.crash_after_step
        return None if not kill and crash is None else cls(kill, crash)

    def before_step(self, trainer) -> None:
        for role, step in self.kill_at.items():
            if step != trainer.step:
                continue
            if role == "rollout":
                trainer.rollouts.kill(0)
            elif role == "learner":
                crash(trainer.learners.ranks[-1])
            else:  # Ray restarts these and retries the next call
                crash(getattr(trainer, role))
            log.warning("fault injection: killed the %s before step %d", role, trainer.step)

    def after_step(self, trainer) -> None:
        if self.crash_after == trainer.step:
            raise SystemExit(f"crash_after_step={self.crash_after}: simulated driver failure")
