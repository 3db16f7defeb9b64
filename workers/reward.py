"""Reward service: a Ray actor that grades responses and scores every reward term of the current stage.

Grading runs with a timeout off the main thread (math-verify's own timeouts need signal.alarm); a timeout or
garbage output counts as wrong. Counts ([SKIP], length) come from token ids.
"""
from __future__ import annotations

import ray

from stepentropy_rl.rewards import make_sample, stage_rewards
from stepentropy_rl.tasks.grading import get_grader, grade_safely, math_match


class RewardService:
    def __init__(self, reward_cfg: dict, grader: str, skip_id: int, delimiter: str = "\n\n",
                 grade_timeout_s: float = 5.0):
        self.fns = stage_rewards(reward_cfg)
        self.grade = get_grader(grader)
        self.skip_id, self.delimiter, self.timeout = skip_id, delimiter, grade_timeout_s

    def _correct(self, text: str, answer: str) -> bool:
        """The grader's verdict; math grading enforces ``grade_timeout_s`` itself, off the main thread."""
        if self.grade is math_match:
            return math_match(text, answer, timeout_s=self.timeout)
        return grade_safely(self.grade, text, answer)  # garbage output: wrong, never a dead service

    def score(self, stage: str, responses: list[dict], answers: list[str]) -> list[dict[str, float]]:
        """Per response ``{term: value, ..., total, correct}`` under the reward of ``stage``."""
        if stage not in self.fns:
            raise ValueError(f"reward.stages has no stage {stage!r}; stages: {sorted(self.fns)}")
        fn, out = self.fns[stage], []
        for r, answer in zip(responses, answers):
            correct = self._correct(r["text"], answer)
            s = make_sample(r["token_ids"], r["text"], correct, self.skip_id, self.delimiter, offsets=r.get("offsets"))
            terms = fn(s)
            terms.update(correct=float(correct), length=float(s.length), n_skip=float(s.n_skip),
                         answered=float(s.answered))
            out.append(terms)
        return out


RewardWorker = ray.remote(RewardService)
