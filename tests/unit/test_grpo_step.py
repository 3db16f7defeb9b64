"""One GRPO step's glue with test doubles whose rewards we choose: one Batch from rollout to loss, to which each
worker adds its columns; group ids per prompt, the advantage of each sample, the old/reference log-prob mapping, and
the sampling temperature reaching every scorer."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from stepentropy_rl.config import build
from stepentropy_rl.data import Example
from stepentropy_rl.driver.grpo import GRPOTrainer, Prompts, outcome_rewards
from stepentropy_rl.driver.roles import Actors
from stepentropy_rl.driver.rollout_group import RolloutGroup

CONF = str(Path(__file__).resolve().parents[2] / "conf")


class _Tok:
    def apply_chat_template(self, messages, **kw):
        return messages[0]["content"] + ("<think>\n" if kw.get("add_generation_prompt") else "")

    def __call__(self, text, add_special_tokens=True):
        return SimpleNamespace(input_ids=[ord(c) for c in text])

    pad_token_id = 0
    eos_token_id = None

    def convert_tokens_to_ids(self, t):
        return 7


def _remote(fn):
    return SimpleNamespace(remote=fn)


class Rollout:
    """Sample j of prompt "q<i>" has text "<i>:<j>" and 2 + j tokens."""

    def __init__(self):
        self.generate = _remote(self._generate)
        self.open_weight_group = _remote(lambda *a: None)
        self.receive_weights = _remote(lambda plan: len(plan))
        self.rng = b"\x01"
        self.rng_state = _remote(lambda: self.rng)
        self.set_rng_state = _remote(lambda s: setattr(self, "rng", s))
        self.ping = _remote(lambda: "one incarnation")  # never restarted

    def _generate(self, prompts, sampling):
        assert all(isinstance(p, list) for p in prompts)
        idx = ["".join(map(chr, p)).removesuffix("<think>\n")[1:] for p in prompts]
        return [[{"text": f"{i}:{j}", "token_ids": [100 + int(i)] * (2 + j)} for j in range(sampling["n"])]
                for i in idx]


class Reward:
    """Totals by (prompt, sample): prompt 0 -> [1, 0], prompt 1 -> [0, 2], prompt 2 -> [5, 5]."""

    TOTALS = {"0": [1.0, 0.0], "1": [0.0, 2.0], "2": [5.0, 5.0]}

    def __init__(self):
        self.score = _remote(self._score)

    def _score(self, stage, batch):
        totals = []
        for text, answer in zip(batch.meta["text"], batch.meta["answer"]):
            i, j = text.split(":")
            assert i == answer, "each sample is graded against its own prompt's answer"
            totals.append(self.TOTALS[i][int(j)])
        return {"total": torch.tensor(totals), "correct": torch.ones(len(totals))}


class Reference:
    """Reference log-prob -10 * (k + 1) on every response token of sample k."""

    def __init__(self):
        self.temperatures, self.models, self.score = [], [], _remote(self._score)

    def _score(self, batch, batch_size, chunk_rows, temperature, model_path=None):
        self.temperatures.append(temperature)
        self.models.append(model_path)
        per_row = -10.0 * torch.arange(1, len(batch) + 1, dtype=torch.float32)[:, None]
        return {"logprobs": per_row * batch.loss_mask, "entropy": torch.zeros_like(batch.loss_mask)}


class Learners:
    """Old log-prob -(k + 1) and entropy 0.5 on every response token of sample k."""

    def __init__(self):
        self.temperatures, self.batches = [], []

    def logprobs_and_entropy(self, batch, temperature=1.0):
        self.temperatures.append(temperature)
        per_row = -torch.arange(1, len(batch) + 1, dtype=torch.float32)[:, None]
        return {"logprobs": per_row * batch.loss_mask, "entropy": 0.5 * batch.loss_mask}

    def train_step(self, batch, loss):
        self.batches.append((batch, loss))
        out = {"pg_loss": 0.0}
        if loss["old_logprobs"] == "current":  # the update's own forward scores old log-probs and entropy
            n = float(batch.loss_mask.sum())
            out.update(entropy_sum=0.5 * n, entropy_tokens=n)
        return out

    def weight_specs(self):
        return "float32", [("w", [4])]

    def open_weight_group(self, world_size, backend, timeout_s):
        self.sync_timeout_s = timeout_s
        return "tcp://127.0.0.1:0", None

    def push_weights(self, plan):
        return [16]


def _trainer(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("config", overrides=[
            "+experiment=entropy_guided", f"run_dir={tmp_path}", "algorithm.prompts_per_step=3", "algorithm.n_samples=2",
            "algorithm.phase.mode=compress", "algorithm.adv_estimator.compress=grpo", "algorithm.temperature.compress=0.6",
            *overrides])
    job = build(cfg)
    problems = [Example(id=str(i), prompt=f"q{i}", answer=str(i)) for i in range(3)]
    learners = Learners()
    rollouts = RolloutGroup([Rollout(), Rollout()], "init")
    rollouts.attach_learners(learners, "gloo", 1.0)
    actors = Actors(rollouts, Reference(), Reward(), learners)
    t = GRPOTrainer(job.algorithm, job.trainer.grpo, job.reference, actors, problems, _Tok(), tmp_path, None,
                    reference_model="models/sft")
    t.prompts.next = lambda k: problems[:k]  # a fixed order, so the expected rewards are known
    return t


@pytest.fixture
def trainer(tmp_path):
    return _trainer(tmp_path)


def _first(batch, name):
    """The first response token's value of a per-token column, per sample."""
    return [float(v[0]) for v in batch.per_response(name)]


def test_train_step_glue(trainer):
    metrics = trainer.train_step()
    (batch, loss), = trainer.learners.batches  # one update per rollout batch
    rows = range(len(batch))
    assert [batch.response_ids(i)[0] - 100 for i in rows] == [0, 0, 1, 1, 2, 2]  # prompt order kept over 2 engines
    assert [len(batch.response_ids(i)) for i in rows] == [2, 3, 2, 3, 2, 3]
    assert batch.meta["group"] == [0, 0, 1, 1, 2, 2]
    for i, a in enumerate(batch.per_response("advantages")):
        assert len(a) == len(batch.response_ids(i)) and len(set(a.tolist())) == 1  # one outcome advantage a token
    off = batch.columns["advantages"] * (1 - batch.loss_mask)
    assert float(off.abs().sum()) == 0.0  # nothing on prompt or padding positions
    # GRPO within each prompt's group (unbiased std of 2 = |r0 - r1| / sqrt 2): +-0.7071, and 0 for a tied group
    assert _first(batch, "advantages") == pytest.approx([0.7071, -0.7071, -0.7071, 0.7071, 0.0, 0.0], abs=1e-3)
    assert _first(batch, "ref_logprobs") == [-10.0, -20.0, -30.0, -40.0, -50.0, -60.0]
    assert batch.columns["reward/total"].tolist() == [1.0, 0.0, 0.0, 2.0, 5.0, 5.0]  # the reward service's columns
    # a single update takes its old log-probs (and the entropy) from its own forward: no separate scoring pass
    assert "old_logprobs" not in batch.columns and loss["old_logprobs"] == "current"
    assert trainer.learners.temperatures == [] and trainer.reference.temperatures == [0.6]
    assert trainer.reference.models == ["models/sft"]  # the KL reference named in the call: a restart reloads it
    assert metrics["sync/version"] == 1 and trainer.rollouts.serving == "policy@1"  # the step pushed its update
    assert loss["temperature"] == 0.6 and loss["kind"] == "grpo"
    assert metrics["reward/total"] == pytest.approx(13 / 6) and metrics["policy/entropy"] == pytest.approx(0.5)


def test_a_nan_entropy_stops_the_step_before_the_controller_and_the_engines(trainer):
    """The phase controller raised a bare ValueError on a NaN entropy: a traceback without the NaN advice."""
    from stepentropy_rl.driver.tracking import NonFiniteError

    step = trainer.learners.train_step
    trainer.learners.train_step = lambda batch, loss: {**step(batch, loss), "entropy_sum": math.nan}
    with pytest.raises(NonFiniteError, match=r"GRPO step 0: \{'policy/entropy': nan\}"):
        trainer.train_step()
    assert trainer.rollouts.serving == "init"  # no weights pushed


def test_a_checkpoint_keeps_the_sampler_state_a_restarted_engine_gets_back(trainer):
    """An engine restarted after the last generation (during a long checkpoint save) reported its fresh seed's state,
    which the checkpoint kept: a resume drew other samples than the uninterrupted run, which restores the recorded
    state at its next call."""
    import base64

    rollouts = trainer.rollouts
    rollouts.engines[1].rng = b"\x05"
    rollouts.generate([list(map(ord, "q0<think>\n")), list(map(ord, "q1<think>\n"))], {"n": 1})
    restarted = rollouts.engines[1]
    restarted.ping, restarted.rng = _remote(lambda: "a second incarnation"), b"\x00"  # Ray restarted it: a fresh seed
    assert [base64.b64decode(s) for s in rollouts.rng_states()] == [b"\x01", b"\x05"]
    rollouts.generate([list(map(ord, "q0<think>\n"))], {"n": 1})
    assert restarted.rng == b"\x05"  # what the uninterrupted run restores


def test_a_share_retried_after_a_failure_without_restart_draws_as_the_first_try(trainer, monkeypatch):
    """An engine that answered with an error (a lost connection) after drawing for its share was retried from the
    advanced state: only a restarted engine had its sampler state put back."""
    import ray.exceptions

    from stepentropy_rl.driver import rollout_group

    flaky, drawn = trainer.rollouts.engines[1], []
    first, real = [True], flaky.generate.remote

    def generate(prompts, sampling):
        drawn.append(flaky.rng)
        flaky.rng = b"\x09"  # the draw advances its state
        if first.pop() if first else False:
            return "failed"
        return real(prompts, sampling)

    flaky.generate = _remote(generate)
    fetch = rollout_group.fetch
    monkeypatch.setattr(rollout_group, "wait_alive", lambda engines, timeout_s: None)  # it is up: no restart
    monkeypatch.setattr(rollout_group, "fetch", lambda x: (_ for _ in ()).throw(
        ray.exceptions.ActorUnavailableError("connection lost", None)) if x == "failed" else fetch(x))
    trainer.rollouts.generate([list(map(ord, "q0<think>\n")), list(map(ord, "q1<think>\n"))], {"n": 1})
    assert drawn == [b"\x01", b"\x01"]  # the retry drew from the state before the call


def test_mini_batches_and_epochs_score_old_logprobs_first(tmp_path):
    trainer = _trainer(tmp_path, "algorithm.ppo_mini_batch_size=1", "algorithm.ppo_epochs=2")
    metrics = trainer.train_step()
    batches = trainer.learners.batches
    assert len(batches) == 6 and metrics["actor/updates"] == 6  # 3 mini-batches of one prompt group, 2 epochs
    assert [[b.response_ids(i)[0] - 100 for i in range(len(b))] for b, _ in batches] == [[0, 0], [1, 1], [2, 2]] * 2
    assert all(loss["old_logprobs"] == "given" for _, loss in batches)
    assert [v for b, _ in batches[:3] for v in _first(b, "old_logprobs")] == [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    assert trainer.learners.temperatures == [0.6]
    assert metrics["policy/entropy"] == pytest.approx(0.5)


def test_fit_runs_hooks_around_steps_and_an_injected_crash_ends_it(tmp_path):
    """Fault injection is a hook (stepentropy_rl/faults.py), not a branch in the training step."""
    from stepentropy_rl.driver.faults import FaultInjection

    t = _trainer(tmp_path, "trainer.grpo.steps=3", "trainer.grpo.save_every=1")
    t.tracker = SimpleNamespace(log=lambda *a, **k: None, size=lambda: 0)
    t.learners.save_checkpoint = lambda path: Path(path).mkdir(parents=True)
    seen = []

    class Recorder:
        def before_step(self, trainer):
            seen.append(("before", trainer.step))

        def after_step(self, trainer):
            seen.append(("after", trainer.step))

    with pytest.raises(SystemExit, match="crash_after_step=2"):
        t.fit(hooks=[Recorder(), FaultInjection(crash_after_step=2)])
    assert seen == [("before", 0), ("after", 1), ("before", 1), ("after", 2)]
    assert (tmp_path / "grpo" / "latest").read_text() == "step_2"  # checkpointed before the crash
    assert FaultInjection.from_config(t.t) is None


def test_prompt_stream_resumes_at_the_same_position():
    probs = list(range(10))
    a = Prompts(probs, seed=3)
    first = a.next(7)
    b = Prompts(probs, seed=3, epoch=a.epoch, index=a.index)
    assert a.next(8) == b.next(8)
    assert sorted(first + Prompts(probs, seed=3, epoch=0, index=7).next(3)) == probs


def test_a_checkpoint_every_step_the_last_two_kept_and_a_resume_drops_rows_logged_after_its_checkpoint(tmp_path):
    """Also: each checkpoint holds every engine's sampler state, and a resume gives it back to the new engines."""
    import json

    from stepentropy_rl.driver.tracking import Tracker

    def trainer():
        t = _trainer(tmp_path, "trainer.grpo.steps=3")  # save_every 1, keep_last 2: the CPU defaults
        t.tracker = Tracker(tmp_path)
        t.learners.save_checkpoint = lambda path: Path(path).mkdir(parents=True)
        t.learners.load_checkpoint = lambda path: None
        return t

    first = trainer()
    for i, engine in enumerate(first.rollouts.engines):
        engine.rng = bytes([7, i])
    first.fit()
    assert sorted(p.name for p in (tmp_path / "grpo").glob("step_*")) == ["step_2", "step_3"]
    metrics = tmp_path / "metrics.jsonl"
    with metrics.open("a") as f:  # a killed run logged a step after its last checkpoint, and half a row
        f.write(json.dumps({"step": 3, "phase/stage": 0}) + "\n" + '{"step": 4, "pha')
    again = trainer()
    assert again.resume() and again.step == 3
    assert [e.rng for e in again.rollouts.engines] == [bytes([7, 0]), bytes([7, 1])]
    # the policy version goes on from the checkpoint's (the first push, then one a step): not from 1 again
    assert again.rollouts.version == first.rollouts.version == 3 and again.rollouts.serving == "policy@3"
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [0, 1, 2]


def test_a_half_written_checkpoint_is_not_counted_and_the_latest_is_never_removed(tmp_path):
    """keep_last=1 with a folder a crash left without its driver.json (here a higher step, as after lowering
    trainer.grpo.steps): counted, it made each save remove the checkpoint it had just written."""
    from stepentropy_rl.driver.tracking import Tracker

    t = _trainer(tmp_path, "trainer.grpo.steps=2", "trainer.grpo.keep_last=1")
    t.tracker = Tracker(tmp_path)
    t.learners.save_checkpoint = lambda path: Path(path).mkdir(parents=True)
    (tmp_path / "grpo" / "step_9" / "learner").mkdir(parents=True)
    t.fit()
    grpo = tmp_path / "grpo"
    assert (grpo / "latest").read_text() == "step_2" and (grpo / "step_2" / "driver.json").exists()
    assert json.loads((grpo / "step_2" / "driver.json").read_text())["lr"] == t.t.lr  # the rate its steps ran at
    assert sorted(p.name for p in grpo.glob("step_*")) == ["step_2", "step_9"]


def test_a_redone_step_killed_while_saving_is_not_taken_for_whole(tmp_path):
    """A step redone after a crash rewrites its checkpoint folder; killed mid-rewrite, the first save's driver.json
    made the mixed shards count as a whole checkpoint."""
    t = _trainer(tmp_path, "trainer.grpo.steps=1")
    stale = tmp_path / "grpo" / "step_0"
    (stale / "learner").mkdir(parents=True)
    (stale / "driver.json").write_text("{}")  # the first save's, before the crash

    def killed(path):
        raise KeyboardInterrupt("killed while writing the shards")

    t.learners.save_checkpoint = killed
    with pytest.raises(KeyboardInterrupt):
        t.save()
    assert not (stale / "driver.json").exists()


class TermReward(Reward):
    """Two terms per sample (correctness: prompt 1's second sample only; length: 0.1 * sample), as a stage's reward
    returns them, and the stage's term specs."""

    def __init__(self):
        super().__init__()
        from stepentropy_rl.rewards import TermSpec

        self.terms = _remote(lambda stage: [TermSpec("correctness", 2.0, {"value": 1.0}),
                                            TermSpec("exp_length", 1.0, {"scale": 0.5})])

    def _score(self, stage, batch):
        cols = super()._score(stage, batch)
        n = len(cols["total"])
        correctness = torch.tensor([2.0 if i == 3 else 0.0 for i in range(n)])  # weighted, as RewardFn returns it
        length = torch.tensor([0.1 * (i % 2) for i in range(n)])
        return {**cols, "correctness": correctness, "exp_length": length, "total": correctness + length}


def test_gdpo_gets_the_stage_reward_terms_one_by_one(tmp_path):
    from stepentropy_rl import algorithms

    t = _trainer(tmp_path, "algorithm.adv_estimator.compress=gdpo")
    t.reward = TermReward()
    t.train_step()
    (batch, _), = t.learners.batches
    groups = np.array(batch.meta["group"])
    # each term's weight times its size (correctness value 1, exp_length scale 0.5), which the normalisation divides out
    want = algorithms.gdpo_advantages({"correctness": (2.0, batch.columns["reward/correctness"] / 2.0),
                                       "exp_length": (0.5, batch.columns["reward/exp_length"] / 0.5)},
                                      batch.loss_mask, groups)
    assert torch.allclose(batch.columns["advantages"], want, atol=1e-6)
    grpo = algorithms.compute_advantages("grpo", outcome_rewards(batch, batch.columns["reward/total"]),
                                         batch.loss_mask, groups)
    assert not torch.allclose(batch.columns["advantages"], grpo, atol=1e-3)


def test_the_weight_sync_timeout_reaches_the_learner_and_every_engine():
    """cluster.learner.sync_timeout_s: how long the survivors of an engine that died mid-push wait (it was 600 s,
    fixed); the learner's side and each engine's open the group with it."""
    learners, engines, asked = Learners(), [Rollout(), Rollout()], []
    for e in engines:
        e.open_weight_group = _remote(lambda *a: asked.append(a))
    group = RolloutGroup(engines, "init")
    group.attach_learners(learners, "gloo", 1.0, timeout_s=42.0)
    group.push_weights()
    assert learners.sync_timeout_s == 42.0 and [a[-1] for a in asked] == [42.0, 42.0] and [a[1] for a in asked] == [1, 2]


def test_a_resumed_grpo_counts_the_time_up_to_its_checkpoint(tmp_path):
    """stage_seconds of a GRPO that a kill split in two: each checkpoint keeps the stage's seconds so far, and the
    rerun's mark adds them to its own (it counted only the last run's before)."""
    import json

    from stepentropy_rl.driver.train import Stages

    from stepentropy_rl.driver.tracking import Tracker

    t = _trainer(tmp_path, "trainer.grpo.steps=2")
    t.tracker = Tracker(tmp_path)
    t.learners.save_checkpoint = lambda path: Path(path).mkdir(parents=True)
    t.learners.load_checkpoint = lambda path: None
    t.clock = lambda: 40.0  # the first run's stage time at each checkpoint
    t.fit()
    assert json.loads((tmp_path / "grpo" / "step_2" / "driver.json").read_text())["stage_seconds"] == 40.0
    again = _trainer(tmp_path, "trainer.grpo.steps=3")
    again.tracker = Tracker(tmp_path)
    again.learners.load_checkpoint = lambda path: None
    assert again.resume() and again.seconds_before == 40.0
    stages = Stages(tmp_path / "run")
    stages.carry(again.seconds_before)
    assert 40.0 <= stages.elapsed() < 45.0
    stages.mark("grpo")
    assert 40.0 <= stages.seconds()["grpo"] < 45.0


@pytest.mark.parametrize("norm, want", [("{compress:false,explore:true}", [0.5, -0.5, -1.0, 1.0, 0.0, 0.0]),
                                        ("{compress:true,explore:false}", [0.7071, -0.7071, -0.7071, 0.7071, 0, 0])])
def test_the_stage_in_force_decides_whether_advantages_are_divided_by_the_std(tmp_path, norm, want):
    """algorithm.norm_adv_by_std per stage (the compress phase here): false is Dr.GRPO, the reward less its group's
    mean (rewards 1, 0 | 0, 2 | 5, 5)."""
    t = _trainer(tmp_path, f"algorithm.norm_adv_by_std={norm}")
    t.train_step()
    (batch, _), = t.learners.batches
    assert _first(batch, "advantages") == pytest.approx(want, abs=1e-3)
