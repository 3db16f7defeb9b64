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


def thinking_tokens(token_ids: list[int], close_id: int | None, eos_id: int | None = None) -> int:
    """Tokens before the ``</think>`` id: the thinking length, counted from ids. A response that never closed is
    all thinking but its final ``eos_id`` (vLLM keeps the EOS it stopped at in the ids).

    >>> thinking_tokens([4, 4, 7, 9, 2], close_id=7, eos_id=2), thinking_tokens([4, 4, 2], close_id=7, eos_id=2)
    (2, 2)
    """
    if close_id is not None and close_id in token_ids:
        return token_ids.index(close_id)
    ends = eos_id is not None and len(token_ids) > 0 and token_ids[-1] == eos_id
    return len(token_ids) - ends


def answer_prefix(prompt: str, thinking: str) -> str:
    r"""Prompt + (pruned) thinking + ``\n</think>``: the model writes the answer from there.

    The step-entropy paper appends ``\n</think>\n\n``; we stop at the tag because a prompt string that ends in
    whitespace tokenizes differently from the same characters mid-text (a trailing "\n\n" merges into one token the
    model never saw before an answer), which cost the tiny reasoner 15 points of accuracy at ratio 0.

    >>> answer_prefix("Q<think>\n", "a\n\n[SKIP]")
    'Q<think>\na\n\n[SKIP]\n</think>'
    """
    return f"{prompt}{thinking}\n{THINK_CLOSE}"


def boxed_span(text: str, start: int = 0, last: bool = False) -> tuple[int, int] | None:
    r"""``(i, j)`` of the first (or ``last``) ``\boxed{...}`` at or after ``start`` whose braces close (nested braces
    allowed): ``text[i]`` starts ``\boxed{`` and ``text[j]`` is its closing brace; None if there is none.

    >>> t = "so \\boxed{3} then \\boxed{\\frac{1}{2}} and \\boxed{4"
    >>> t[slice(*boxed_span(t))], t[slice(*boxed_span(t, last=True))], boxed_span("\\boxed{4")
    ('\\boxed{3', '\\boxed{\\frac{1}{2}', None)
    """
    closed, opened = [], []  # one pass, braces matched with a stack: linear in len(text) however many boxes never close
    box = text.find(BOXED, start)
    for j in range(start, len(text)):
        c = text[j]
        if c == "{":
            is_box = box >= 0 and j == box + len(BOXED) - 1
            opened.append(box if is_box else None)
            if is_box:
                box = text.find(BOXED, box + 1)
        elif c == "}" and opened:
            i = opened.pop()
            if i is not None:
                closed.append((i, j))
    if not closed:
        return None
    return max(closed) if last else min(closed)


def boxed_answer(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` in ``text``, stripped; None if there is none or its braces never close.

    >>> boxed_answer("so \\boxed{3} then \\boxed{ \\frac{1}{2} }"), boxed_answer("\\boxed{3} \\boxed{4")
    ('\\frac{1}{2}', None)
    """
    span = boxed_span(text, max(0, text.rfind(BOXED)))
    return None if span is None else text[span[0] + len(BOXED): span[1]].strip()


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
    thinking, closed = split_thinking(response)
    return response[len(thinking) + len(THINK_CLOSE):] if closed else None
