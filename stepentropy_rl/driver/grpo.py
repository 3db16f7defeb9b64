"""GRPO with entropy-phase guidance, driven from here; the actors do the work.

One step: rollout (vLLM, n samples a prompt, the stage's temperature) -> old log-probs and exact entropies
(learners) -> reference log-probs (KL) -> reward terms (reward service, the stage's reward) -> advantages (verl
registry; the stage's estimator) -> policy update (learners) -> phase controller reads the mean entropy -> weights
to the rollout engines. Checkpoints (learner shards via DCP + driver state) make a killed run resume where it was.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from stepentropy_rl import algorithms
from stepentropy_rl.batch import Batch
from stepentropy_rl.cot_format import THINK_CLOSE, thinking_tokens
from stepentropy_rl.driver import progress
from stepentropy_rl.driver.faults import die_at
from stepentropy_rl.driver.remote import fetch
from stepentropy_rl.driver.tracking import require_finite
from stepentropy_rl.files import atomic_write_text
from stepentropy_rl.config import AlgorithmConfig, GRPOConfig, ReferenceConfig
from stepentropy_rl.phase import PhaseController
from stepentropy_rl.rewards import gdpo_components
from stepentropy_rl.tokenizer import prompt_ids

TRAINED = ("actor/", "policy/")  # metrics of the update and the policy: NaN here means a diverged model
log = logging.getLogger(__name__)
CONSOLE = ("phase/stage", "reward/total", "reward/correct", "response/think_tokens", "policy/entropy", "time/step")


class Prompts:
    """Endless, resumable stream of problems: a fresh seeded permutation each epoch; position = (epoch, index)."""

    def __init__(self, problems, seed: int, epoch: int = 0, index: int = 0):
        self.problems, self.seed, self.epoch, self.index = problems, seed, epoch, index

    def _order(self) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(f"{self.seed}/{self.epoch}").shuffle(order)
        return order

    def next(self, k: int) -> list:
        out, order = [], self._order()
        while len(out) < k:
            if self.index >= len(order):
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order()
            out.append(self.problems[order[self.index]])
            self.index += 1
        return out


def outcome_rewards(batch: Batch, totals: torch.Tensor) -> torch.Tensor:
    """verl's layout, in the batch's: each sample's reward on its last response token, 0 elsewhere ([B, T]).

    >>> b = Batch.from_pairs([[1, 2], [3]], [[4, 5], [6]], pad_id=0)
    >>> outcome_rewards(b, torch.tensor([1.0, -2.0])).tolist()
    [[0.0, 0.0, 0.0, 1.0], [0.0, -2.0, 0.0, 0.0]]
    """
    rewards = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    rows = torch.nonzero(batch.response_lens > 0).flatten()  # an empty response has no token to carry it
    rewards[rows, batch.last_response_index()[rows]] = totals[rows].float()
    return rewards


class GRPOTrainer:
    """``actors`` (``roles.Actors``): a ``RolloutGroup`` with the learners attached (weight pushes), the reference
    and reward actors (or in-process doubles) with ``score``, and a ``LearnerGroup``. ``scoring``: the reference's
    batch sizes; ``seed``: the prompt order's; ``reference_model``: the KL reference's path, named in every call to
    the reference (a restarted reference comes back with the model it was started with, and reloads this one).
    ``clock()``: the stage's seconds so far, kept in each checkpoint; a resume reads them into ``seconds_before``."""

    def __init__(self, algorithm: AlgorithmConfig, grpo: GRPOConfig, scoring: ReferenceConfig, actors, problems,
                 tokenizer, run_dir: Path, tracker, seed: int = 0, reference_model: str | None = None, clock=None):
        self.a, self.t, self.scoring = algorithm, grpo, scoring
        self.reference_model = reference_model
        self.rollouts, self.reference, self.reward, self.learners = (actors.rollouts, actors.reference, actors.reward,
                                                                     actors.learners)
        self.tok, self.tracker = tokenizer, tracker
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.close_id = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
        self.eos_id = tokenizer.eos_token_id
        self.dir = Path(run_dir) / "grpo"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.phase = PhaseController(self.a.phase)
        self.prompts = Prompts(problems, seed)
        self.step = 0
        self.clock, self.seconds_before = clock, 0.0
        self._reward_terms: dict = {}  # stage -> its reward's TermSpecs (GDPO)

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def _latest(self) -> Path | None:
        marker = self.dir / "latest"
        return self.dir / marker.read_text().strip() if marker.exists() else None

    def save(self) -> None:
        """Learner shards (DCP) and driver state under ``grpo/step_N``; the ``latest`` pointer moves only once both
        are whole, then all but the last ``trainer.grpo.keep_last`` whole checkpoints are removed (a folder a crash
        left half-written is not counted, and the one ``latest`` names is never removed)."""
        path = self.dir / f"step_{self.step}"
        # a step redone after a crash rewrites its folder: the driver.json of the first save would vouch for shards
        # half rewritten if this save is killed too (``export`` and ``keep_last`` count a folder with it as whole)
        (path / "driver.json").unlink(missing_ok=True)
        self.learners.save_checkpoint(str(path / "learner"))
        die_at("checkpoint_learner_saved")
        state = {"step": self.step, "epoch": self.prompts.epoch, "index": self.prompts.index,
                 "phase": self.phase.state_dict(), "torch_rng": torch.random.get_rng_state().tolist(),
                 "metrics_bytes": self.tracker.size(), "engine_rng": self.rollouts.rng_states(),
                 "policy_version": self.rollouts.version, "stage_seconds": self.clock() if self.clock else None,
                 "lr": self.t.lr}  # a resume may go on at another rate: check_grpo_checkpoints compares the latest
        atomic_write_text(path / "driver.json", json.dumps(state))
        atomic_write_text(self.dir / "latest", path.name)
        whole = sorted(int(p.name.split("_")[1]) for p in self.dir.glob("step_*")
                       if p.name.split("_")[1].isdigit() and (p / "driver.json").exists())
        for old in whole[: -self.t.keep_last]:
            if old != self.step:
                shutil.rmtree(self.dir / f"step_{old}", ignore_errors=True)

    def resume(self) -> bool:
        path = self._latest()
        if path is None:
            return False
        state = json.loads((path / "driver.json").read_text())
        self.learners.load_checkpoint(str(path / "learner"))
        self.step, self.prompts.epoch, self.prompts.index = state["step"], state["epoch"], state["index"]
        self.seconds_before = state.get("stage_seconds") or 0.0
        self.phase.load_state_dict(state["phase"])
        torch.random.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        self.tracker.rewind(state.get("metrics_bytes"))  # rows of steps after this checkpoint are made again
        self.rollouts.set_rng_states(state.get("engine_rng"))  # the next rollouts sample as the first run's did
        self.rollouts.version = state.get("policy_version", 1) - 1  # the push below re-sends that version
        self.push_weights()
        log.info("resumed GRPO from %s (step %d, stage %s)", path, self.step, self.phase.stage)
        return True

    def push_weights(self) -> dict:
        """Stream the current policy into every engine (``RolloutGroup.push_weights``)."""
        return self.rollouts.push_weights()

    # ---- one step ------------------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One GRPO step on one ``Batch``: the rollout makes it, and the learners, the reference and the reward
        service each add their columns (old log-probs and entropy, reference log-probs, reward terms) before the
        advantages are added and the learners update on it."""
        a, t, timing = self.a, self.t, {}
        stage = self.phase.stage
        problems = self.prompts.next(a.prompts_per_step)
        pids = [prompt_ids(self.tok, p) for p in problems]  # the one tokenization every actor sees
        temperature = float(a.temperature[stage])  # log-probs, KL and entropies are of the sampling distribution
        sampling = {"n": a.n_samples, "temperature": temperature, "top_p": float(a.top_p),
                    "max_tokens": int(t.max_tokens), "skip_special_tokens": False}

        t0 = time.time()
        outs = self.rollouts.generate(pids, sampling)
        timing["gen"] = time.time() - t0
        flat = [(i, s) for i, o in enumerate(outs) for s in o]
        batch = Batch.from_pairs([pids[i] for i, _ in flat], [s["token_ids"] for _, s in flat], self.pad_id,
                                 group=[i for i, _ in flat], text=[s["text"] for _, s in flat],
                                 answer=[problems[i].answer for i, _ in flat],
                                 data_source=[getattr(problems[i], "data_source", "") for i, _ in flat],
                                 extra_info=[getattr(problems[i], "extra_info", {}) for i, _ in flat])

        # One update per rollout batch: the PPO ratio is 1 at that update, so the old log-probs (and the entropy)
        # come from the update's own forward; with mini-batches or epochs they are scored here, before any update.
        mini, epochs = a.ppo_mini_batch_size, a.ppo_epochs
        single = epochs == 1 and mini >= a.prompts_per_step
        t0 = time.time()
        if not single:
            old = self.learners.logprobs_and_entropy(batch, temperature)
            batch = batch.union({"old_logprobs": old["logprobs"], "entropy": old["entropy"]})
        timing["old_logprob"] = time.time() - t0
        t0 = time.time()
        if a.kl_coef > 0:
            ref = fetch(self.reference.score.remote(batch, self.scoring.batch_size, self.scoring.chunk_rows,
                                                      temperature, model_path=self.reference_model))
            batch = batch.union({"ref_logprobs": ref["logprobs"]})
        timing["ref"] = time.time() - t0

        t0 = time.time()
        scores = fetch(self.reward.score.remote(stage, batch))
        batch = batch.union({f"reward/{k}": v for k, v in scores.items()})
        timing["reward"] = time.time() - t0

        t0 = time.time()
        components = None
        if a.adv_estimator[stage] == "gdpo":  # each term normalised on its own (the stage's reward specs, once)
            if stage not in self._reward_terms:
                self._reward_terms[stage] = fetch(self.reward.terms.remote(stage))
            components = gdpo_components(self._reward_terms[stage], scores)
        adv = algorithms.compute_advantages(a.adv_estimator[stage], outcome_rewards(batch, scores["total"]),
                                            batch.loss_mask, np.array(batch.meta["group"]),
                                            norm_by_std=a.norm_adv_by_std[stage], beta=a.beta, components=components)
        batch = batch.union({"advantages": adv})
        timing["adv"] = time.time() - t0

        t0 = time.time()
        loss = {"kind": "grpo", "clip_ratio_low": a.clip_ratio_low, "clip_ratio_high": a.clip_ratio_high,
                "clip_ratio_c": a.clip_ratio_c, "loss_agg_mode": a.loss_agg_mode, "kl_coef": a.kl_coef,
                "kl_type": a.kl_type, "temperature": temperature,
                "loss_scale_factor": a.loss_scale_factor or t.max_tokens,
                "old_logprobs": "current" if single else "given"}
        update = self.update(batch, loss, mini * a.n_samples, epochs)
        timing["update"] = time.time() - t0

        n_tok = float(batch.loss_mask.sum())
        if single:
            mean_entropy = update.pop("entropy_sum") / max(1.0, update.pop("entropy_tokens"))
        else:
            mean_entropy = float(batch.columns["entropy"].sum()) / max(1.0, n_tok)
        # a diverged update stops here, before the phase controller reads its entropy and the engines its weights
        trained = {k if "/" in k else f"actor/{k}": v for k, v in update.items()}
        require_finite({"policy/entropy": mean_entropy, **trained}, f"GRPO step {self.step}")
        self.phase.update(mean_entropy, self.step)
        sync = self.push_weights()
        timing["sync"] = sync["seconds"]

        metrics = {f"reward/{k}": float(v.mean()) for k, v in scores.items()}
        think = [thinking_tokens(batch.response_ids(i), self.close_id, self.eos_id) for i in range(len(batch))]
        metrics.update({"samples": len(batch), "sync/bytes": sync["bytes"], "sync/version": sync["version"],
                        "response/length": n_tok / len(batch), "response/think_tokens": float(np.mean(think)),
                        "perf/tokens_per_s": n_tok / max(timing["gen"], 1e-9),  # generated tokens a second
                        "policy/entropy": mean_entropy, "phase/stage_name": stage,
                        "adv/mean": float((adv * batch.loss_mask).sum() / batch.loss_mask.sum().clamp(min=1)),
                        **trained,
                        **self.phase.step_log(), **{f"time/{k}": v for k, v in timing.items()}})
        metrics["time/step"] = sum(timing.values())
        return metrics

    def update(self, batch: Batch, loss: dict, mini_size: int, epochs: int) -> dict:
        """``epochs`` passes over the batch in mini-batches of ``mini_size`` samples (whole prompt groups, in order),
        one optimizer step each (verl's ``ppo_mini_batch_size`` and ``ppo_epochs``); metrics averaged over steps.
        From the second step on the policy has moved, so the PPO ratio and its clipping are real."""
        steps = [self.learners.train_step(batch.select(range(i, min(i + mini_size, len(batch)))), loss)
                 for _ in range(epochs) for i in range(0, len(batch), mini_size)]
        out = {k: sum(m[k] for m in steps) / len(steps) for k in steps[0]}
        out["updates"] = len(steps)
        return out

    def fit(self, hooks: list = ()) -> None:
        """Train until ``trainer.grpo.steps``; call :meth:`resume` first to continue a killed run. Each hook's
        optional ``before_step(trainer)`` and ``after_step(trainer)`` run around every step (after its checkpoint),
        e.g. ``faults.FaultInjection``."""
        bar = progress.bar(self.t.steps, "GRPO", "step", initial=self.step)  # a resumed run: where it left off
        while self.step < self.t.steps:
            for h in hooks:
                getattr(h, "before_step", lambda t: None)(self)
            metrics = self.train_step()
            require_finite({k: v for k, v in metrics.items() if k.startswith(TRAINED)}, f"GRPO step {self.step}")
            self.tracker.log(metrics, step=self.step, console_keys=CONSOLE)
            self.step += 1
            bar.update(1)
            if self.step % self.t.save_every == 0 or self.step == self.t.steps:
                self.save()
            for h in hooks:
                getattr(h, "after_step", lambda t: None)(self)
        bar.close()
