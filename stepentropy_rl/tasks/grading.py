"""Answer extraction and grading: exact match for the embedded task, math-verify for real math."""
from __future__ import annotations

import concurrent.futures as cf

from stepentropy_rl.cot_format import answer_text, boxed_answer
from stepentropy_rl.registry import Registry

_POOL = cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="grader")
GRADERS = Registry("grader")  # name -> grade(response, answer) -> bool  (data.grader)
register_grader = GRADERS.register


@register_grader("exact")
def exact_match(response: str, answer: str) -> bool:
    """The last boxed answer equals ``answer`` as a string (whitespace-stripped).

    >>> exact_match("The answer is \\\\boxed{15}.", "15"), exact_match("\\\\boxed{16}", "15")
    (True, False)
    """
    got = boxed_answer(response)
    return got is not None and got == str(answer).strip()


def _math_verify(response: str, answer: str) -> bool:
    from math_verify import parse, verify  # imported lazily: it is slow to import

    gold = parse(f"${answer}$", parsing_timeout=None)
    pred = parse(response, parsing_timeout=None)
    return bool(verify(gold, pred, timeout_seconds=None))


@register_grader("math")
def math_match(response: str, answer: str, timeout_s: float = 5.0) -> bool:
    """math-verify equivalence, run off the main thread with our own timeout (math-verify's uses signal.alarm).

    A timeout or a parser error counts as wrong.
    """
    fut = _POOL.submit(_math_verify, response, answer)
    try:
        return fut.result(timeout=timeout_s)
    except Exception:  # timeout or garbage input: wrong, never a crash
        return False




def grade_safely(grade, response: str, answer: str) -> bool:
    """``grade(response, answer)``; garbage that makes a grader raise counts as wrong, never as a crash."""
    try:
        return bool(grade(response, answer))
    except Exception:
        return False


def get_grader(name: str):
    """The grader registered as ``name`` (``data.grader``); ValueError listing the known ones."""
    if name not in GRADERS:
        raise ValueError(f"data.grader must be one of {sorted(GRADERS)}, got {name!r}")
    return GRADERS[name]


def make_grader(name: str, span: str = "answer", timeout_s: float = 5.0):
    """``grade(response, answer) -> bool``: grader ``name`` on the response's ``span`` (see
    ``cot_format.answer_text``: by default the answer after ``</think>``, and no ``</think>`` is wrong). Garbage
    and timeouts count as wrong; math grading enforces ``timeout_s`` off the main thread.

    >>> grade = make_grader("exact")
    >>> grade("5 + 3 = \\\\boxed{8} wait", "8"), grade("x</think>The answer is \\\\boxed{8}.", "8")
    (False, True)
    """
    base = get_grader(name)
    answer_text(" ", span)  # validates span now

    def grade(response: str, answer: str) -> bool:
        text = answer_text(response, span)
        if text is None:
            return False
        if base is math_match:
            return math_match(text, answer, timeout_s=timeout_s)
        return grade_safely(base, text, answer)

    return grade
