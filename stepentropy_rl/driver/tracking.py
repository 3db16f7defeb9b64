"""Metrics: a JSONL file in the run directory (append-only, so a resumed run keeps its history), the console,
and wandb (offline unless configured; ``logger.wandb=disabled`` turns it off)."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger("stepentropy_rl")


class NonFiniteError(RuntimeError):
    """A training step produced a NaN or infinite metric; the step is neither logged nor checkpointed."""


def require_finite(metrics: dict, where: str) -> None:
    """``NonFiniteError`` naming the metrics of ``where`` that are NaN or infinite: a stage must not be marked done,
    or a checkpoint written, on a diverged model (rerun from the last checkpoint with a lower learning rate)."""
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise NonFiniteError(f"{where}: {bad} is not finite; nothing of this step is kept. Lower the learning rate "
                             f"and rerun the same command to resume from the last checkpoint")


class Tracker:
    def __init__(self, run_dir: Path, wandb_mode: str = "offline", project: str = "stepentropy_rl",
                 config: dict | None = None, name: str | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.run = None
        if wandb_mode != "disabled":
            try:
                import wandb

                self.run = wandb.init(project=project, dir=str(run_dir), mode=wandb_mode, config=config,
                                      name=name, resume="allow", id=name)
            except Exception as e:  # tracking must never kill training
                log.warning("wandb unavailable (%s); metrics go to %s only", e, self.path)

    def log(self, metrics: dict, step: int, console_keys: tuple = ()) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.run is not None:
            # wandb's own step counter stays monotonic across stages (SFT, then GRPO restarting at 0)
            self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float))})
        if console_keys:
            shown = " ".join(f"{k.split('/')[-1]}={_fmt(row.get(k))}" for k in console_keys if k in row)
            log.info("step %d | %s", step, shown)

    def size(self) -> int:
        """Bytes of ``metrics.jsonl`` so far: a checkpoint or a finished stage records it (:meth:`rewind`)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def rewind(self, size: int | None) -> None:
        """Drop what was logged after ``size`` bytes: the rows of steps a killed run made after its last checkpoint
        (or of a stage it did not finish), which the rerun makes again; so every step is in the file once, in
        order. wandb keeps what it was sent."""
        if size is not None and self.path.exists() and self.path.stat().st_size > size:
            with self.path.open("r+b") as f:
                f.truncate(size)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
