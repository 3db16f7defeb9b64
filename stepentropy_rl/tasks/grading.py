"""Answer extraction and grading: exact match for the embedded task, math-verify for real math."""
from __future__ import annotations

import concurrent.futures as cf

_POOL = cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="grader")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed), or None.

    >>> extract_boxed("so \\\\boxed{3} then \\\\boxed{\\\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def exact_match(response: str, answer: str) -> bool:
    """The last boxed answer equals ``answer`` as a string (whitespace-stripped).

    >>> exact_match("The answer is \\\\boxed{15}.", "15"), exact_match("\\\\boxed{16}", "15")
    (True, False)
    """
    got = extract_boxed(response)
    return got is not None and got == str(answer).strip()


def _math_verify(response: str, answer: str) -> bool:
    from math_verify import parse, verify  # imported lazily: it is slow to import

    gold = parse(f"${answer}$", parsing_timeout=None)
    pred = parse(response, parsing_timeout=None)
    return bool(verify(gold, pred, timeout_seconds=None))


def math_match(response: str, answer: str, timeout_s: float = 5.0) -> bool:
    """math-verify equivalence, run off the main thread with our own timeout (math-verify's uses signal.alarm).

    A timeout or a parser error counts as wrong.
    """
    fut = _POOL.submit(_math_verify, response, answer)
    try:
        return fut.result(timeout=timeout_s)
    except Exception:  # timeout or garbage input: wrong, never a crash
        return False


GRADERS = {"exact": exact_match, "math": math_match}


def grade_safely(grade, response: str, answer: str) -> bool:
    """``grade(response, answer)``; garbage that makes a grader raise counts as wrong, never as a crash."""
    try:
        return bool(grade(response, answer))
    except Exception:
        return False


def get_grader(name: str):
    if name not in GRADERS:
        raise ValueError(f"data.grader must be one of {sorted(GRADERS)}, got {name!r}")
    return GRADERS[name]
