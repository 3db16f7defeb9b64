"""Reward service: a Ray actor that grades responses and scores every reward term of the current stage.

Math grading runs in worker processes with real timeouts (``grader_pool``); a timeout or garbage output counts as
wrong. Counts ([SKIP], length) come from token ids.
"""
from __future__ import annotations

import ray
import torch

from stepentropy_rl.batch import Batch
from stepentropy_rl.rewards import make_sample, stage_rewards
from stepentropy_rl.config import DataConfig
from stepentropy_rl.tasks.grading import grader_of


class RewardService:
    """``skip_id`` and ``close_id`` are the ids of ``[SKIP]`` and ``</think>``; ``data`` names the grader and the
    span it reads (``answer``: the text after ``</think>``, so a truncated response is wrong whatever its thinking
    holds). A user's scorer (``reward.custom``) or grader (``data.grader=file.py:function``) is imported here, in
    the actor's own process, from its file."""

    def __init__(self, reward_cfg: dict, data: DataConfig, skip_id: int, close_id: int, delimiter: str = "\n\n"):
        self.fns = stage_rewards(reward_cfg)
        self.grade = grader_of(data)  # garbage or timeout: wrong, never a crash
        self.skip_id, self.close_id, self.delimiter = skip_id, close_id, delimiter

    def terms(self, stage: str) -> list:
        """The ``rewards.TermSpec`` list of ``stage``'s reward (GDPO normalises its terms one by one)."""
        if stage not in self.fns:
            raise ValueError(f"reward.stages has no stage {stage!r}; stages: {sorted(self.fns)}")
        return list(self.fns[stage].terms)

    def score(self, stage: str, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-sample columns ([B] float) ``{term, ..., total, correct, length, n_skip, answered}`` under the reward
        of ``stage``, for the responses of ``batch`` (its ``text`` and ``answer`` meta; counts from its ids)."""
        if stage not in self.fns:
            raise ValueError(f"reward.stages has no stage {stage!r}; stages: {sorted(self.fns)}")
        fn, out, meta = self.fns[stage], [], batch.meta
        grades = self.grade.many(meta["text"], meta["answer"])
        for i, (text, correct) in enumerate(zip(meta["text"], grades)):
            s = make_sample(batch.response_ids(i), text, correct, self.skip_id, self.delimiter, self.close_id,
                            ground_truth=meta["answer"][i], data_source=meta.get("data_source", [""] * len(grades))[i],
                            extra_info=meta.get("extra_info", [{}] * len(grades))[i])
            terms = fn(s)
            terms.update(correct=float(correct), length=float(s.length), n_skip=float(s.n_skip),
                         answered=float(s.answered))
            out.append(terms)
        return {k: torch.tensor([t[k] for t in out], dtype=torch.float32) for k in out[0]} if out else {}


RewardWorker = ray.remote(RewardService)
