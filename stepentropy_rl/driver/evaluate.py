"""Held-out evaluation of the model a rollout group currently serves: accuracy with its standard error, thinking
tokens, [SKIP]s, and for problems with labelled gold steps (the embedded task) the share of redundant thinking tokens
and of CoTs right at every step."""
from __future__ import annotations

from stepentropy_rl.cot_format import SKIP_TOKEN, THINK_CLOSE, thinking_tokens
from stepentropy_rl.cot_stats import binomial_stderr, redundant_fraction, step_token_labels
from stepentropy_rl.tasks.grading import grade_all
from stepentropy_rl.tokenizer import prompt_ids


def labelled(problems) -> bool:
    """Every problem has a gold solution whose steps carry labels (the embedded task's grammar)."""
    return bool(problems) and all(getattr(p, "solution", None) and getattr(p, "steps", None)
                                  and all("label" in s for s in p.steps) for p in problems)


def evaluate(rollout, tokenizer, problems, grade, sampling: dict, skip_token: str = SKIP_TOKEN) -> dict:
    """``{accuracy, accuracy_stderr, thinking_tokens, skips, n}``; ``skips`` is the mean count of ``skip_token`` per
    sample (0 if the vocabulary lacks it). ``grade(response, answer)`` (``grading.make_grader``) reads the span it
    was made for; a failed sample (no answer, garbage, truncated) counts as wrong.

    With labelled problems (:func:`labelled`) also ``redundant_fraction`` (share of thinking tokens in steps
    ``basket.label_step`` calls redundant), ``steps_right`` (share of CoTs ``basket.diagnose`` finds no mistake in:
    every move, carry and the answer line right) and ``right_by_luck`` (share with the right answer but a wrong
    step)."""
    from stepentropy_rl.tasks.basket import diagnose, label_step

    prompts = [prompt_ids(tokenizer, p) for p in problems]
    outs = rollout.generate(prompts, {**sampling, "n": 1, "skip_special_tokens": False})
    close_id = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
    skip_id = tokenizer.get_vocab().get(skip_token)
    with_steps = labelled(problems)
    samples = [o[0] if o else {"text": "", "token_ids": []} for o in outs]
    grades = grade_all(grade, [s["text"] for s in samples], [p.answer for p in problems])
    correct, tokens, skips, steps, right, lucky = 0, 0, 0, [], 0, 0
    for p, sample, ok in zip(problems, samples, grades):
        correct += ok
        tokens += thinking_tokens(sample["token_ids"], close_id)
        skips += sample["token_ids"].count(skip_id) if skip_id is not None else 0
        if with_steps:
            steps.append(step_token_labels(tokenizer, sample["token_ids"], label_step))
            clean = diagnose(p.solution, sample["text"]) is None
            right += clean
            lucky += ok and not clean
    n = len(problems)
    out = {"accuracy": correct / n, "accuracy_stderr": binomial_stderr(correct / n, n), "thinking_tokens": tokens / n,
           "skips": skips / n, "n": n}
    if with_steps:
        out.update(redundant_fraction=redundant_fraction(steps), steps_right=right / n, right_by_luck=lucky / n)
    return out
