"""Metrics: a JSONL file in the run directory (append-only, so a resumed run keeps its history), the console,
wandb (offline unless configured; ``logger.wandb=disabled`` turns it off) and TensorBoard (``logger.tensorboard``).

The wandb run id is made from the run directory's absolute path, so a rerun of the same directory resumes its wandb
run and two directories (two sweeps' ``job 0``) never share one; ``logger.group`` (under a Hydra multirun: the
sweep directory) groups a sweep's jobs. ``tracking.json`` in the run directory says where the metrics went.
"""
from __future__ import annotations

import json
import logging
import math
import zlib
from pathlib import Path

from stepentropy_rl.files import atomic_write_json

log = logging.getLogger("stepentropy_rl")


class NonFiniteError(RuntimeError):
    """A training step produced a NaN or infinite metric; the step is neither logged nor checkpointed."""


def require_finite(metrics: dict, where: str) -> None:
    """``NonFiniteError`` naming the metrics of ``where`` that are NaN or infinite: a stage must not be marked done,
    or a checkpoint written, on a diverged model (rerun from the last checkpoint with a lower learning rate)."""
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise NonFiniteError(f"{where}: {bad} is not finite; nothing of this step is kept. Rerun the command with a "
                             f"lower learning rate (trainer.sft.lr or trainer.grpo.lr): GRPO resumes from its last "
                             f"checkpoint under it, SFT starts again (the same command would fail the same way)")


def run_id(run_dir: Path) -> str:
    """``<dir name>-<crc32 of its absolute path>``: stable across reruns of one directory, distinct between two."""
    path = Path(run_dir).resolve()
    return f"{path.name}-{zlib.crc32(str(path).encode()):08x}"


class Tracker:
    """``logger``: a ``LoggerConfig`` (``wandb`` mode, ``project``, ``group``, ``tensorboard``); None logs to the
    JSONL file and the console only."""

    def __init__(self, run_dir: Path, logger=None, config: dict | None = None):
        run_dir = Path(run_dir)
        self.path = run_dir / "metrics.jsonl"
        self.run, self.tb = None, None
        where = {"metrics": str(self.path)}
        if logger is not None and logger.wandb != "disabled":
            try:
                import wandb

                self.run = wandb.init(project=logger.project, dir=str(run_dir), mode=logger.wandb, config=config,
                                      name=run_dir.name, id=run_id(run_dir), group=logger.group, resume="allow")
                # charts take the stage's own step as their x axis, as metrics.jsonl and TensorBoard do: GRPO's start
                # at 0, and the steps a resumed run makes again land where they were, not after the run's last row
                try:
                    self.run.define_metric("step")
                    self.run.define_metric("*", step_metric="step")
                except Exception as e:
                    log.warning("wandb charts keep wandb's own step as their x axis (%s)", e)
                where["wandb"] = {"id": self.run.id, "project": logger.project, "group": logger.group,
                                  "mode": logger.wandb}
            except Exception as e:  # tracking must never kill training
                log.warning("wandb unavailable (%s); metrics go to %s only", e, self.path)
        self.tb_stale = run_dir / "tensorboard.stale"  # while TensorBoard is being made again from the file
        if logger is not None and logger.tensorboard:
            self.tb_dir = run_dir / "tensorboard"
            self.tb = self._tensorboard()
            if self.tb_stale.exists():  # a run killed while it cut the file or rewrote the events
                self._rebuild_tensorboard()
            where["tensorboard"] = str(self.tb_dir)
        self.gauges = _ray_gauges(run_id(run_dir))  # the Ray dashboard's metrics, when Ray is up: a sweep's job0
        # and another sweep's job0 are two runs there
        atomic_write_json(run_dir / "tracking.json", where)

    def log(self, metrics: dict, step: int, console_keys: tuple = ()) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.run is not None:
            # wandb's own step counter stays monotonic; the charts' x axis is "step" (define_metric above)
            self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float))})
        if self.gauges is not None:
            self.gauges.update(row)
        if self.tb is not None:
            self._tb_row(row)
        if console_keys:
            shown = " ".join(f"{k.split('/')[-1]}={_fmt(row.get(k))}" for k in console_keys if k in row)
            log.info("step %d | %s", step, shown)

    def _tensorboard(self, fresh: bool = False):
        from torch.utils.tensorboard import SummaryWriter

        if fresh:
            import shutil

            shutil.rmtree(self.tb_dir, ignore_errors=True)
        return SummaryWriter(str(self.tb_dir))

    def _tb_row(self, row: dict) -> None:
        """Tags carry their stage (sft/..., reward/...), so each has its own step axis."""
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(k, v, row["step"])

    def size(self) -> int:
        """Bytes of ``metrics.jsonl`` so far: a checkpoint or a finished stage records it (:meth:`rewind`)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def rewind(self, size: int | None) -> None:
        """Drop what was logged after ``size`` bytes: the rows of steps a killed run made after its last checkpoint
        (or of a stage it did not finish), which the rerun makes again; so every step is in the file once, in
        order. TensorBoard's events are written again from the file (its steps start anew at each stage, so
        ``purge_step`` would hide an earlier stage's); wandb keeps what it was sent, the steps made again drawn at their
        own step."""
        if size is not None and self.path.exists() and self.path.stat().st_size > size:
            if self.tb is not None:
                self.tb_stale.touch()  # from here until the events are whole again: a kill leaves it for the rerun
            with self.path.open("r+b") as f:
                f.truncate(size)
            if self.tb is not None:
                self._rebuild_tensorboard()

    def _rebuild_tensorboard(self) -> None:
        """TensorBoard's events written again from ``metrics.jsonl`` (a row a kill cut short is left out), then
        the stale mark removed."""
        self.tb.close()
        self.tb = self._tensorboard(fresh=True)
        for line in self.path.read_text().splitlines() if self.path.exists() else []:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            self._tb_row(row)
        self.tb.flush()
        self.tb_stale.unlink(missing_ok=True)

    def results(self, summary: dict, tables: dict[str, list[dict]], images: dict[str, Path]) -> None:
        """A finished job's results: ``summary`` values, row tables and image files (wandb's summary, Tables and
        Images; TensorBoard's text and images). The JSONL and the run directory have them already."""
        if self.run is not None:
            import wandb

            self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            for name, rows in tables.items():
                if rows:
                    cols = list(rows[0])
                    self.run.log({name: wandb.Table(columns=cols, data=[[_cell(r.get(c)) for c in cols]
                                                                        for r in rows])})
            self.run.log({name: wandb.Image(str(path)) for name, path in images.items() if Path(path).exists()})
        if self.tb is not None:
            for name, rows in tables.items():
                if rows:
                    cols = list(rows[0])
                    text = "\n".join(["|" + "|".join(cols) + "|", "|" + "---|" * len(cols)] +
                                     ["|" + "|".join(str(_cell(r.get(c))) for c in cols) + "|" for r in rows])
                    self.tb.add_text(name, text)
            for name, path in images.items():
                if Path(path).exists():
                    import matplotlib.image

                    self.tb.add_image(name, matplotlib.image.imread(str(path))[..., :3], dataformats="HWC")

    def finish(self) -> None:
        if self.gauges is not None:
            self.gauges.stop()
        if self.run is not None:
            self.run.finish()
        if self.tb is not None:
            self.tb.close()


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _ray_gauges(run: str):
    import ray

    if not ray.is_initialized():
        return None
    from stepentropy_rl.driver.ray_metrics import RayGauges

    return RayGauges(run)


def _cell(v):
    """A table cell wandb accepts: numbers and strings as they are, anything else as JSON text."""
    return v if isinstance(v, (int, float, str)) or v is None else json.dumps(v)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
