"""The response format every part of the project reads and writes: thinking, ``</think>``, then the answer.

    <think>\\n step \\n\\n step \\n\\n [SKIP] \\n\\n step \\n</think>\\n\\n The answer is \\boxed{42}.

The generation prompt opens ``<think>``; steps are separated by blank lines; a pruned step is ``[SKIP]``; the answer
is the last ``\\boxed{}`` after ``</think>``. A response that never closes its thinking has no answer.
"""
from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SKIP_TOKEN = "[SKIP]"
BOXED = "\\boxed{"
GRADE_SPANS = ("answer", "all")


def split_thinking(text: str) -> tuple[str, bool]:
    """The thinking part of a response and whether ``</think>`` closed it.

    >>> split_thinking("a\\n\\nb\\n</think>\\n\\nx"), split_thinking("a\\n\\nb")
    (('a\\n\\nb\\n', True), ('a\\n\\nb', False))
    """
    idx = text.find(THINK_CLOSE)
    return (text, False) if idx < 0 else (text[:idx], True)


def answer_text(response: str, span: str = "answer") -> str | None:
    """What a grader reads: with ``span="answer"`` the text after the first ``</think>`` (None if the thinking never
    closed: a truncated response has no answer, whatever its thinking contains); with ``"all"`` the whole response.

    >>> answer_text("so \\\\boxed{3}?"), answer_text("x</think>\\\\boxed{4}"), answer_text("so \\\\boxed{3}?", "all")
    (None, '\\\\boxed{4}', 'so \\\\boxed{3}?')
    """
    if span not in GRADE_SPANS:
        raise ValueError(f"data.grade_span must be one of {GRADE_SPANS}, got {span!r}")
    if span == "all":
        return response
    idx = response.find(THINK_CLOSE)
    return None if idx < 0 else response[idx + len(THINK_CLOSE):]
