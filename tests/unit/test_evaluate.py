"""Held-out evaluation accounting: accuracy, thinking tokens before </think> (or before the EOS of a response
that never closed), [SKIP] per sample, failures wrong."""
from types import SimpleNamespace

import pytest

from stepentropy_rl.driver import evaluate as ev
from stepentropy_rl.tasks.grading import exact_match, make_grader


class _Tok:
    vocab = {"</think>": 1, "[SKIP]": 2}
    eos_token_id = 3

    def get_vocab(self):
        return dict(self.vocab)

    def convert_tokens_to_ids(self, t):
        return self.vocab[t]

    def apply_chat_template(self, messages, **kw):  # its generation prompt opens the thinking, as R1's does
        return messages[0]["content"] + ("<think>\n" if kw.get("add_generation_prompt") else "")

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
    # a [SKIP] after </think> is not a skipped step: the skip rewards count the thinking's alone
    samples = [[{"text": "a [SKIP] b </think> [SKIP] \\boxed{7}", "token_ids": [5, 2, 5, 2, 1, 2, 9]}],
               [{"text": "no answer", "token_ids": [5, 5, 5, 3]}],  # never closed: thinking but its EOS
               []]  # a failed request counts as wrong
    res = ev.evaluate(_rollout(samples), _Tok(), problems, exact_match, {})
    assert res == {"accuracy": pytest.approx(1 / 3), "accuracy_stderr": pytest.approx((2 / 9 / 3) ** 0.5),
                   "thinking_tokens": pytest.approx((4 + 3 + 0) / 3), "skips": pytest.approx(2 / 3), "n": 3}
    assert "redundant_fraction" not in res  # no labelled gold steps: nothing to measure it against
    no_skip_vocab = type("T", (_Tok,), {"vocab": {"</think>": 1}})()
    assert ev.evaluate(_rollout(samples), no_skip_vocab, problems, exact_match, {})["skips"] == 0


def test_evaluate_sends_ids_and_grades_the_answer_after_think(monkeypatch):
    """A truncated R1 response with \\boxed{} in its thinking is wrong; the engine gets ids, never text."""
    problems = [SimpleNamespace(prompt="q", answer="7")]
    truncated = [[{"text": "so 3 + 4 = \\boxed{7}, wait, let me recheck", "token_ids": [5, 5, 5]}]]
    seen = []
    assert ev.evaluate(_rollout(truncated, seen), _Tok(), problems, make_grader("exact"), {})["accuracy"] == 0
    assert seen == [[ord(c) for c in "q<think>\n"]]  # no BOS added by tokenizing: the chat template renders its own
    assert ev.evaluate(_rollout(truncated), _Tok(), problems, make_grader("exact", "all"), {})["accuracy"] == 1


def test_redundant_tokens_are_counted_when_a_model_joins_its_steps_with_one_newline():
    """Steps joined by one newline were one piece, labelled by its first line: the redundant lines inside it counted
    as essential, and the redundant share fell as if they had been removed."""
    from stepentropy_rl.cot_stats import redundant_fraction, step_token_labels
    from stepentropy_rl.data import generated
    from stepentropy_rl.tasks.basket import BasketConfig, label_step
    from stepentropy_rl.tokenizer import encode, train_tokenizer

    p = generated(BasketConfig(style="verbose"), 1, 0, "test")[0]
    tok = train_tokenizer([q.prompt + "\n" + q.solution for q in generated(BasketConfig(style="verbose"), 200, 1,
                                                                            "train")], 400)
    apart = p.solution
    joined = apart.replace("\n\n", "\n")
    shares = [redundant_fraction([step_token_labels(tok, encode(tok, t), label_step)]) for t in (apart, joined)]
    assert shares[0] > 0.5 and shares[1] == pytest.approx(shares[0], abs=0.03)
    for cots in (False, True):  # the training evaluations write the viewer's records too (cots=True)
        got = [ev.evaluate(_rollout([[{"text": t, "token_ids": encode(tok, t), "topk_entropy": None}]]), tok, [p],
                           exact_match, {}, cots=cots)["redundant_fraction"] for t in (apart, joined)]
        assert got == pytest.approx(shares, abs=1e-9), cots


def test_labelled_problems_report_redundant_tokens_and_steps_right():
    """On the embedded task: the gold CoT is right at every step; a CoT with a wrong carry that still ends on the
    right total is right by luck; the redundant share counts the tokens of steps labelled redundant."""
    from stepentropy_rl.data import generated
    from stepentropy_rl.tasks.basket import BasketConfig
    from stepentropy_rl.tokenizer import encode, train_tokenizer

    problems = generated(BasketConfig(redundancy=0.6), 3, 0, "test")
    tok = train_tokenizer([p.prompt + "\n" + p.solution for p in generated(BasketConfig(), 200, 1, "train")], 400)
    first_move = next(s["text"] for s in problems[1].steps if s["label"] == "essential")
    a, b = first_move.split(": ")[1].split(" = ")[0].split(" ", 1)
    lucky = problems[1].solution.replace(f": {a} ", f": {int(a) + 1} ", 1)  # carried total off by one
    texts = [problems[0].solution, lucky, "Now nobody."]
    samples = [[{"text": t, "token_ids": encode(tok, t)}] for t in texts]
    res = ev.evaluate(_rollout(samples), tok, problems, exact_match, {})
    assert res["accuracy"] == pytest.approx(2 / 3) and res["steps_right"] == pytest.approx(1 / 3)
    assert res["right_by_luck"] == pytest.approx(1 / 3)
    assert sum(res["mistakes"].values()) == 2 and "wrong carry" in res["mistakes"]  # the lucky one and "Now nobody."
    assert res["mistakes_in_wrong"] == {"missed person": 1}  # only "Now nobody." lost the answer
    count = lambda t: len(encode(tok, t))  # noqa: E731
    red = sum(count(s["text"]) for p in problems[:2] for s in p.steps if s["label"] == "redundant")
    total = sum(count(s["text"]) for p in problems[:2] for s in p.steps) + count("Now nobody.")
    assert 0 < red and res["redundant_fraction"] == pytest.approx(red / total, abs=0.03)
