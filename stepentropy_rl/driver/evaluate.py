"""Held-out evaluation of the model a rollout group currently serves: accuracy with its standard error, thinking
tokens, [SKIP]s, and for problems with labelled gold steps (the embedded task) the share of redundant thinking tokens
and of CoTs right at every step."""
from __future__ import annotations

from stepentropy_rl.cot_format import SKIP_TOKEN, THINK_CLOSE, thinking_tokens
from stepentropy_rl.cot_stats import binomial_stderr, redundant_fraction, step_token_labels
from stepentropy_rl.tasks.grading import grade_all
from stepentropy_rl.tokenizer import prompt_ids


def labelled(problems) -> bool:
    """Every problem has a gold solution in the embedded task's grammar whose steps carry labels (a user's labelled
    steps on other problems are not: ``diagnose`` reads the task's moves)."""
    from stepentropy_rl.tasks.basket import has_moves

    return bool(problems) and all(getattr(p, "solution", None) and getattr(p, "steps", None)
                                  and all("label" in s for s in p.steps) and has_moves(p.solution) for p in problems)


def evaluate(rollout, tokenizer, problems, grade, sampling: dict, skip_token: str = SKIP_TOKEN,
             cots: bool = False, cache=None) -> dict:
    """``{accuracy, accuracy_stderr, thinking_tokens, skips, n}``; ``skips`` is the mean count of ``skip_token`` per
    sample (0 if the vocabulary lacks it). ``grade(response, answer)`` (``grading.make_grader``) reads the span it
    was made for; a failed sample (no answer, garbage, truncated) counts as wrong.

    With labelled problems (:func:`labelled`) also ``redundant_fraction`` (share of thinking tokens in steps
    ``basket.label_step`` calls redundant), ``steps_right`` (share of CoTs ``basket.diagnose`` finds no mistake in:
    every move, carry and the answer line right), ``right_by_luck`` (share with the right answer but a wrong
    step), ``mistakes`` (how many CoTs ``diagnose`` stopped at each kind of first mistake) and ``mistakes_in_wrong``
    (the same over the CoTs whose answer is wrong: what cost the accuracy).

    ``cots=True`` adds ``cots``: one ``cot_record`` per problem (for the viewer), with token entropies estimated
    from vLLM's top-k log-probs when ``sampling`` asks for them (``logprobs=k``): the evaluated policy's own.

    ``cache``: a ``cot_cache.CoTCache`` the samples are read from when an earlier job wrote the same ones from the
    same engine state (the engines then get the state writing them left), and written to otherwise; the result then
    says ``cots_cached``."""
    from stepentropy_rl.cot_cache import with_topk_entropy, written
    from stepentropy_rl.cot_record import cot_record
    from stepentropy_rl.tasks.basket import diagnose, label_step

    prompts = [prompt_ids(tokenizer, p) for p in problems]
    got = written(cache, rollout, prompts, {**sampling, "n": 1, "skip_special_tokens": False}, with_topk_entropy)
    got.store()  # nothing to score: the entry is complete
    close_id = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
    skip_id = tokenizer.get_vocab().get(skip_token)
    with_steps = labelled(problems)
    samples = got.cots
    grades = grade_all(grade, [s["text"] for s in samples], [p.answer for p in problems])
    correct, tokens, skips, steps, right, lucky, records, mistakes, in_wrong = 0, 0, 0, [], 0, 0, [], {}, {}
    for p, sample, ok in zip(problems, samples, grades):
        correct += ok
        n_think = thinking_tokens(sample["token_ids"], close_id, tokenizer.eos_token_id)
        tokens += n_think
        # [SKIP]s before the first </think> token (a tag sampled in pieces is none: the whole CoT counts)
        skips += sample["token_ids"][:n_think].count(skip_id) if skip_id is not None else 0
        mistake, rec = None, None
        if cots:
            estimate = sample["topk_entropy"]
            rec = cot_record(tokenizer, sample["token_ids"], estimate, labeler=label_step if with_steps else None)
        if with_steps:  # line by line, not the record's \n\n steps: a model may join its steps with one newline
            steps.append(step_token_labels(tokenizer, sample["token_ids"], label_step))
            mistake = diagnose(p.solution, sample["text"])
            if mistake:
                mistakes[mistake] = mistakes.get(mistake, 0) + 1
                if not ok:
                    in_wrong[mistake] = in_wrong.get(mistake, 0) + 1
            right += mistake is None
            lucky += ok and mistake is not None
        if rec is not None:
            records.append({"id": p.id, "prompt": p.prompt, "answer": p.answer, "correct": bool(ok),
                            "finish_reason": sample.get("finish_reason"), "thinking_tokens": n_think,
                            **({"mistake": mistake} if with_steps else {}),  # None: every step right
                            "entropy_source": f"vLLM top-{sampling['logprobs']} log-probs"
                            if estimate is not None else None,
                            **rec})
    n = len(problems)
    out = {"accuracy": correct / n, "accuracy_stderr": binomial_stderr(correct / n, n), "thinking_tokens": tokens / n,
           "skips": skips / n, "n": n}
    if with_steps:
        out.update(redundant_fraction=redundant_fraction(steps), steps_right=right / n, right_by_luck=lucky / n,
                   mistakes=_by_count(mistakes), mistakes_in_wrong=_by_count(in_wrong))
    if cots:
        out["cots"] = records
    if cache is not None:
        out["cots_cached"] = got.hit
    return out


def _by_count(counts: dict) -> dict:
    """``counts`` with the most frequent key first."""
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
