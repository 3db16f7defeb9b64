"""One chain of thought as the viewer reads it: the thinking text, each token's character span and entropy, the steps
(character span, token span, step entropy, label where known) and the answer after ``</think>``.

The study writes one per problem to ``RUN_DIR/cots.jsonl`` (with which steps each strategy and ratio pruned), each eval
to ``RUN_DIR/eval/<model>.cots.jsonl``; ``python -m stepentropy_rl.view RUN_DIR`` renders them.
"""
from __future__ import annotations

from typing import Callable, Sequence

from stepentropy_rl.cot_format import THINK_CLOSE
from stepentropy_rl.entropy import segment_steps, step_entropies
from stepentropy_rl.tokenizer import response_thinking

Labeler = Callable[[str], tuple[str, str]]  # step text -> (label, kind), e.g. tasks.basket.label_step


def cot_record(tokenizer, ids: Sequence[int], entropy: Sequence[float] | None, delimiter: str = "\n\n",
               aggregate: str = "sum", labeler: Labeler | None = None) -> dict:
    """``{thinking, closed, answer_text, tokens, steps}`` of a response given as token ids.

    ``tokens[j] = [char_start, char_end, entropy]`` for each thinking token (entropy None when ``entropy`` is None);
    ``steps[k] = {start, end, tok: [tok_start, tok_end], entropy, label, kind}`` with ``[start, end)`` the step's
    text in ``thinking`` (delimiter excluded) and ``entropy`` the ``aggregate`` of its tokens' entropies (full
    precision: pruning ranks on it). ``entropy`` holds one value per id (at least per thinking token).
    """
    text, offsets, thinking, closed = response_thinking(tokenizer, list(ids))
    spans = segment_steps(thinking, offsets, delimiter)
    n_think = sum(1 for s, _ in offsets if s < len(thinking))
    ents = list(entropy)[:n_think] if entropy is not None else None
    if ents is not None and len(ents) < n_think:
        raise ValueError(f"{len(ents)} token entropies for {n_think} thinking tokens")
    step_ent = step_entropies(ents, spans, aggregate) if ents is not None else [None] * len(spans)
    steps = []
    for sp, h in zip(spans, step_ent):
        label, kind = labeler(sp.text) if labeler else (None, None)
        lead = len(sp.text) - len(sp.text.lstrip())
        steps.append({"start": sp.char_start + lead, "end": sp.char_start + len(sp.text.rstrip()),
                      "tok": [sp.tok_start, sp.tok_end], "entropy": h, "label": label, "kind": kind})
    tokens = [[s, min(e, len(thinking)), None if ents is None else round(float(ents[j]), 4)]
              for j, (s, e) in enumerate(offsets[:n_think])]
    answer = text[len(thinking) + len(THINK_CLOSE):] if closed else ""
    return {"thinking": thinking, "closed": closed, "answer_text": answer, "tokens": tokens, "steps": steps}


def step_texts(record: dict) -> list[str]:
    """The record's step texts, as the pruning stage cuts them.

    >>> step_texts({"thinking": "a b\\n\\n c", "steps": [{"start": 0, "end": 3}, {"start": 6, "end": 7}]})
    ['a b', 'c']
    """
    return [record["thinking"][s["start"]:s["end"]] for s in record["steps"]]
