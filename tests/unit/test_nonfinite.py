"""A diverged step is never kept: SFT raises before its model is saved or marked done, GRPO before its step is
logged or checkpointed, so a rerun resumes from the last good checkpoint."""
import math
from types import SimpleNamespace

import pytest

from stepentropy_rl.config import SFTConfig
from stepentropy_rl.driver.tracking import NonFiniteError, require_finite


class Learners:
    """Stands in for a LearnerGroup whose loss turns NaN at step ``bad``."""
    world_size = 2

    def __init__(self, bad: int):
        self.bad, self.steps = bad, 0

    def set_lr(self, lr):
        pass

    def train_step(self, batch, loss):
        self.steps += 1
        return {"actor/nll": math.nan if self.steps > self.bad else 1.0, "actor/grad_norm": 0.5}


class Tok:
    eos_token_id, pad_token_id = 2, 0


def test_require_finite_names_the_metric():
    require_finite({"a": 1.0, "b": "text"}, "x")
    with pytest.raises(NonFiniteError, match=r"SFT step 3: \{'actor/nll': nan\}"):
        require_finite({"actor/nll": math.nan, "ok": 0.1}, "SFT step 3")
    with pytest.raises(NonFiniteError, match="inf"):
        require_finite({"entropy": math.inf}, "GRPO step 0")


def test_a_nan_sft_stops_before_anything_is_kept(monkeypatch):
    from stepentropy_rl.driver import sft

    monkeypatch.setattr(sft, "sft_batch", lambda tok, rows: _Rows(len(rows)))
    learners = Learners(bad=2)
    rows = [{"prompt": "q", "response": "r"}] * 8
    with pytest.raises(NonFiniteError, match="SFT step 2"):
        sft.run_sft(rows, learners, Tok(), SFTConfig(epochs=2, batch_size=4, lr=1e-3), seed=0)
    assert learners.steps == 3


class _Rows:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def select(self, idx):
        return idx


def test_a_nan_grpo_step_is_neither_logged_nor_checkpointed():
    from stepentropy_rl.driver.grpo import GRPOTrainer

    logged, saved = [], []
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.step, trainer.t = 0, SimpleNamespace(steps=6, save_every=1)
    trainer.tracker = SimpleNamespace(log=lambda m, step, console_keys: logged.append(step))
    trainer.save = lambda: saved.append(trainer.step)
    values = iter([0.5, 0.4, math.nan, 0.3])
    trainer.train_step = lambda: {"actor/pg_loss": next(values), "phase/trend": math.nan}  # no trend yet: fine
    with pytest.raises(NonFiniteError, match="GRPO step 2"):
        trainer.fit()
    assert logged == [0, 1] and saved == [1, 2] and trainer.step == 2
