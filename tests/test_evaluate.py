"""Held-out evaluation accounting: accuracy, thinking tokens before </think>, [SKIP] per sample, failures wrong."""
from types import SimpleNamespace

import pytest

from stepentropy_rl import evaluate as ev
from stepentropy_rl.tasks.grading import exact_match


class _Tok:
    vocab = {"</think>": 1, "[SKIP]": 2}

    def get_vocab(self):
        return dict(self.vocab)

    def convert_tokens_to_ids(self, t):
        return self.vocab[t]

    def apply_chat_template(self, messages, **kw):
        return messages[0]["content"]


def _rollout(samples):
    return SimpleNamespace(generate=SimpleNamespace(remote=lambda prompts, sampling: samples))


def test_evaluate_counts_skips_thinking_tokens_and_failures(monkeypatch):
    monkeypatch.setattr(ev.ray, "get", lambda x: x)
    problems = [SimpleNamespace(prompt=f"q{i}", answer="7") for i in range(3)]
    samples = [[{"text": "a [SKIP] b </think> \\boxed{7}", "token_ids": [5, 2, 5, 2, 1, 9]}],
               [{"text": "no answer", "token_ids": [5, 5, 5]}],
               []]  # a failed request counts as wrong
    res = ev.evaluate(_rollout(samples), _Tok(), problems, exact_match, {})
    assert res == {"accuracy": pytest.approx(1 / 3), "thinking_tokens": pytest.approx((4 + 3 + 0) / 3),
                   "skips": pytest.approx(2 / 3), "n": 3}
    no_skip_vocab = type("T", (_Tok,), {"vocab": {"</think>": 1}})()
    assert ev.evaluate(_rollout(samples), no_skip_vocab, problems, exact_match, {})["skips"] == 0
