"""SFT's step count: epochs over the kept rows, floored by ``min_steps`` so that a small kept set is not under-trained;
its batches: passes over the rows in shuffled order."""
import random
from collections import Counter

import pytest

from stepentropy_rl.config import SFTConfig
from stepentropy_rl.data import DataError
from stepentropy_rl.driver import sft


@pytest.mark.parametrize("rows,min_steps,expected", [
    (172, 0, 22),    # 4 epochs x 172 rows / 32, rounded up to whole passes (21 steps: the AMX run at 36.8%)
    (172, 80, 80),   # the floor lifts it
    (800, 80, 100),  # a large kept set already trains longer: the floor changes nothing
    (3, 0, 4),       # fewer rows than a batch: each step is a pass
])
def test_steps_are_epochs_over_the_rows_at_least_min_steps(rows, min_steps, expected):
    assert sft.sft_steps(SFTConfig(epochs=4, batch_size=32, min_steps=min_steps), rows) == expected


@pytest.mark.parametrize("rows,batch_size,epochs", [(100, 64, 1), (172, 32, 4), (10, 4, 3), (3, 32, 2)])
def test_each_epoch_sees_every_row_once_and_no_batch_holds_a_row_twice(rows, batch_size, epochs):
    steps = sft.sft_steps(SFTConfig(epochs=epochs, batch_size=batch_size, min_steps=0), rows)
    batches = list(sft.epoch_batches(rows, batch_size, steps, random.Random(0)))
    assert len(batches) == steps and all(len(b) == len(set(b)) == min(batch_size, rows) for b in batches)
    stream = [i for b in batches for i in b]
    for e in range(epochs):  # the first ``epochs`` passes are whole: each row exactly once
        assert Counter(stream[e * rows:(e + 1) * rows]) == Counter(range(rows))
    assert stream[:rows] != list(range(rows))  # shuffled, not in the rows' order


def test_one_epoch_on_the_gpu_preset_trains_on_every_row():
    """The GPU preset's single epoch: batches drawn independently at random saw about 63% of the rows."""
    steps = sft.sft_steps(SFTConfig(epochs=1, batch_size=64, min_steps=0), 1000)  # the preset's 0
    assert steps == 16
    seen = {i for b in sft.epoch_batches(1000, 64, steps, random.Random(1)) for i in b}
    assert len(seen) == 1000


class _Learners:
    world_size = 2

    def __init__(self):
        self.lrs = []

    def set_lr(self, lr):
        self.lrs.append(lr)

    def train_step(self, batch, loss):
        return {"actor/nll": 1.0}


class _Rows(list):
    def select(self, idx):
        return idx


class _Tok:
    eos_token_id, pad_token_id = 2, 0


def test_run_sft_takes_the_floored_steps_with_the_lr_decaying_over_all_of_them(monkeypatch):
    monkeypatch.setattr(sft, "sft_batch", lambda tok, rows: _Rows(rows))
    learners = _Learners()
    history = sft.run_sft([{"prompt": "q", "response": "r"}] * 8, learners, _Tok(),
                          SFTConfig(epochs=1, batch_size=4, lr=1e-3, min_steps=10), seed=0)
    assert len(history) == 10 and learners.lrs[0] == 1e-3 and learners.lrs[-1] == pytest.approx(1e-4)


@pytest.mark.parametrize("kept", [0, 1])
def test_fewer_kept_rows_than_learner_ranks_is_a_clear_error_before_any_step(monkeypatch, kept):
    monkeypatch.setattr(sft, "sft_batch", lambda tok, rows: _Rows(rows))
    learners = _Learners()
    with pytest.raises(DataError, match=f"SFT has {kept} rows for 2 learner ranks.*prune/stats.json"):
        sft.run_sft([{"prompt": "q", "response": "r"}] * kept, learners, _Tok(), SFTConfig(), seed=0)
    assert learners.lrs == []  # no step ran
