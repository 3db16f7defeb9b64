"""Reward service: a Ray actor that grades responses and scores every reward term of the current stage.

Grading runs with a timeout off the main thread (math-verify's own timeouts need signal.alarm); a timeout or
garbage output counts as wrong. Counts ([SKIP], length) come from token ids.
"""
from __future__ import annotations

import ray

from stepentropy_rl.rewards import make_sample, stage_rewards
from stepentropy_rl.tasks.grading import make_grader


class RewardService:
    """``skip_id`` and ``close_id`` are the ids of ``[SKIP]`` and ``</think>``; ``grade_span`` what the grader reads
    (``answer``: the text after ``</think>``, so a truncated response is wrong whatever its thinking holds)."""

    def __init__(self, reward_cfg: dict, grader: str, skip_id: int, close_id: int, delimiter: str = "\n\n",
                 grade_span: str = "answer", grade_timeout_s: float = 5.0):
        self.fns = stage_rewards(reward_cfg)
        self.grade = make_grader(grader, grade_span, grade_timeout_s)  # garbage or timeout: wrong, never a crash
        self.skip_id, self.close_id, self.delimiter = skip_id, close_id, delimiter

    def score(self, stage: str, responses: list[dict], answers: list[str]) -> list[dict[str, float]]:
        """Per response ``{term: value, ..., total, correct}`` under the reward of ``stage``."""
        if stage not in self.fns:
            raise ValueError(f"reward.stages has no stage {stage!r}; stages: {sorted(self.fns)}")
        fn, out = self.fns[stage], []
        for r, answer in zip(responses, answers):
            correct = self.grade(r["text"], answer)
            s = make_sample(r["token_ids"], r["text"], correct, self.skip_id, self.delimiter, self.close_id)
            terms = fn(s)
            terms.update(correct=float(correct), length=float(s.length), n_skip=float(s.n_skip),
                         answered=float(s.answered))
            out.append(terms)
        return out


RewardWorker = ray.remote(RewardService)
