"""Fault injection for the fault harnesses: a GRPO step hook that kills a rollout engine or the driver on cue.

Configured by ``trainer.grpo.crash_after_step`` and ``trainer.grpo.kill_rollout_at_step`` (null = off) and attached
by the training pipeline as a hook, so the training step itself has no fault branches.
"""
from __future__ import annotations

from stepentropy_rl.config import GRPOConfig


class FaultInjection:
    """``kill_rollout_at_step``: kill rollout worker 0 (Ray restarts it) before that step's generation;
    ``crash_after_step``: end the driver once that many steps are done (and checkpointed if due)."""

    def __init__(self, kill_rollout_at_step: int | None = None, crash_after_step: int | None = None):
        self.kill_at, self.crash_after = kill_rollout_at_step, crash_after_step

    @classmethod
    def from_config(cls, grpo: GRPOConfig) -> "FaultInjection | None":
        kill, crash = grpo.kill_rollout_at_step, grpo.crash_after_step
        return None if kill is None and crash is None else cls(kill, crash)

    def before_step(self, trainer) -> None:
        if self.kill_at == trainer.step:
            trainer.rollouts.kill(0)

    def after_step(self, trainer) -> None:
        if self.crash_after == trainer.step:
            raise SystemExit(f"crash_after_step={self.crash_after}: simulated driver failure")
