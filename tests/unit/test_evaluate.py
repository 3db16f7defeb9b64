"""Held-out evaluation accounting: accuracy, thinking tokens before </think>, [SKIP] per sample, failures wrong."""
from types import SimpleNamespace

import pytest

from stepentropy_rl.driver import evaluate as ev
from stepentropy_rl.tasks.grading import exact_match, make_grader


class _Tok:
    vocab = {"</think>": 1, "[SKIP]": 2}

    def get_vocab(self):
        return dict(self.vocab)

    def convert_tokens_to_ids(self, t):
        return self.vocab[t]

    def apply_chat_template(self, messages, **kw):
        return messages[0]["content"]

    def __call__(self, text, add_special_tokens=True):
        return SimpleNamespace(input_ids=([0] if add_special_tokens else []) + [ord(c) for c in text])


def _rollout(samples, seen=None):
    """A rollout group double: ``generate`` returns ``samples``."""
    def generate(prompts, sampling):
        if seen is not None:
            seen.extend(prompts)
        return samples
    return SimpleNamespace(generate=generate)


def test_evaluate_counts_skips_thinking_tokens_and_failures(monkeypatch):
    problems = [SimpleNamespace(prompt=f"q{i}", answer="7") for i in range(3)]
    samples = [[{"text": "a [SKIP] b </think> \\boxed{7}", "token_ids": [5, 2, 5, 2, 1, 9]}],
               [{"text": "no answer", "token_ids": [5, 5, 5]}],
               []]  # a failed request counts as wrong
    res = ev.evaluate(_rollout(samples), _Tok(), problems, exact_match, {})
    assert res == {"accuracy": pytest.approx(1 / 3), "thinking_tokens": pytest.approx((4 + 3 + 0) / 3),
                   "skips": pytest.approx(2 / 3), "n": 3}
    no_skip_vocab = type("T", (_Tok,), {"vocab": {"</think>": 1}})()
    assert ev.evaluate(_rollout(samples), no_skip_vocab, problems, exact_match, {})["skips"] == 0


def test_evaluate_sends_ids_and_grades_the_answer_after_think(monkeypatch):
    """A truncated R1 response with \\boxed{} in its thinking is wrong; the engine gets ids, never text."""
    problems = [SimpleNamespace(prompt="q", answer="7")]
    truncated = [[{"text": "so 3 + 4 = \\boxed{7}, wait, let me recheck", "token_ids": [5, 5, 5]}]]
    seen = []
    assert ev.evaluate(_rollout(truncated, seen), _Tok(), problems, make_grader("exact"), {})["accuracy"] == 0
    assert seen == [[ord("q")]]  # no BOS added by tokenizing: the chat template renders its own
    assert ev.evaluate(_rollout(truncated), _Tok(), problems, make_grader("exact", "all"), {})["accuracy"] == 1
