"""Held-out evaluation: accuracy and mean thinking tokens of the model a rollout group currently serves."""
from __future__ import annotations

from stepentropy_rl.cot_format import SKIP_TOKEN, THINK_CLOSE, thinking_tokens
from stepentropy_rl.tokenizer import prompt_ids


def evaluate(rollout, tokenizer, problems, grade, sampling: dict, skip_token: str = SKIP_TOKEN) -> dict:
    """``{accuracy, thinking_tokens, skips, n}``; ``skips`` is the mean count of ``skip_token`` per sample (0 if the
    vocabulary lacks it). ``grade(response, answer)`` (``grading.make_grader``) reads the span it was made for; a
    failed sample (no answer, garbage, truncated) counts as wrong."""
    prompts = [prompt_ids(tokenizer, p.prompt) for p in problems]
    outs = rollout.generate(prompts, {**sampling, "n": 1, "skip_special_tokens": False})
    close_id = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
    skip_id = tokenizer.get_vocab().get(skip_token)
    correct, tokens, skips = 0, 0, 0
    for p, o in zip(problems, outs):
        sample = o[0] if o else {"text": "", "token_ids": []}
        correct += bool(grade(sample["text"], p.answer))
        tokens += thinking_tokens(sample["token_ids"], close_id)
        skips += sample["token_ids"].count(skip_id) if skip_id is not None else 0
    n = len(problems)
    return {"accuracy": correct / n, "thinking_tokens": tokens / n, "skips": skips / n, "n": n}
