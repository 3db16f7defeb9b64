"""Answer extraction and grading: exact match for the embedded task, math-verify for real math."""
from __future__ import annotations

import logging
import numbers

from stepentropy_rl.cot_format import answer_text, boxed_answer
from stepentropy_rl.registry import Registry
from stepentropy_rl.typed import ConfigError
from stepentropy_rl.tasks.grader_pool import shared_pool

log = logging.getLogger(__name__)

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


@register_grader("math")
def math_match(response: str, answer: str, timeout_s: float = 5.0) -> bool:
    """math-verify equivalence, in a worker process with a real timeout (``grader_pool``); a timeout or a parser
    error counts as wrong."""
    return shared_pool(timeout_s=timeout_s).grade([response], [answer])[0]


class GraderError(ConfigError):
    """A user's grader that cannot be right: it returned something that is not a verdict, or raised on every one of
    its first samples. Not swallowed: every verdict would be False and nothing said. A config error (``data.grader``):
    at load it is named as one, and where a grade finds it the run stops with one line."""


def grade_safely(grade, response: str, answer: str) -> bool:
    """``grade(response, answer)``; garbage that makes a grader raise counts as wrong, never as a crash (a
    ``GraderError`` is the grader itself being broken, and stops the run)."""
    try:
        return bool(grade(response, answer))
    except GraderError:
        raise
    except Exception:
        return False


def get_grader(name: str):
    """The grader registered as ``name`` (``data.grader``), or a user's ``file.py:function`` (``user_grader``);
    ValueError listing the known ones."""
    from stepentropy_rl.hooks import load_function, split_spec

    spec = split_spec(name)
    if spec:
        return user_grader(load_function(*spec, "data.grader"))
    if name not in GRADERS:
        raise ValueError(f"data.grader must be one of {sorted(GRADERS)} or path/to/file.py:function, got {name!r}")
    return GRADERS[name]


FIRST_CALLS = 10  # a user's grader that raises on each of its first this many samples is broken, not the samples


class FirstCalls:
    """Tells a broken user function from one that fails on some inputs: ``raised`` records a failed call and says
    whether it raised on each of the first ``FIRST_CALLS`` calls that count (samples with an answer to read)."""

    def __init__(self):
        self.counted = self.failed = self.failed_counted = 0

    def ok(self, counted: bool) -> None:
        self.counted += counted

    def raised(self, counted: bool) -> bool:
        self.counted += counted
        self.failed += 1
        self.failed_counted += counted
        return counted and self.failed_counted == self.counted == FIRST_CALLS


def cannot_take(fn, *args) -> str | None:
    """Why ``fn`` cannot be called with ``args`` (its signature's TypeError), or None; None also where no signature
    can be read (a builtin: its first calls will tell)."""
    import inspect

    try:
        inspect.signature(fn).bind(*args)
    except TypeError as e:
        return str(e)
    except ValueError:
        pass
    return None


def user_grader(fn):
    """``fn(solution_str, ground_truth)`` as a grader: right when it returns True or a score of at least 1 (verl's
    rule-based scorers give 1.0 for a right answer and 0 or a small format score otherwise); numpy scalars and
    verl's ``{"score": ...}`` dicts are read the same. Anything else returned, or an exception on each of the first
    ``FIRST_CALLS`` samples (a wrong signature, a typo), is a ``GraderError``; later exceptions count as wrong.

    >>> user_grader(lambda s, g: 1.0)("x", "y"), user_grader(lambda s, g: 0.1)("x", "y"), user_grader(lambda s, g: True)("x", "y")
    (True, False, True)
    >>> user_grader(lambda s, g: {"score": 1.0})("x", "y")
    True
    """
    from stepentropy_rl.cot_format import BOXED

    why = cannot_take(fn, "solution", "truth")
    if why:
        raise GraderError(f"data.grader {getattr(fn, '__name__', fn)} cannot take (solution_str, ground_truth): {why}")
    first = FirstCalls()  # samples with a box count: a grader may fail on garbage, not on every answer

    def grade(response: str, answer: str) -> bool:
        boxed = BOXED in str(response)
        try:
            r = fn(response, answer)
        except Exception as e:
            if first.raised(boxed):
                name = getattr(fn, "__name__", fn)
                raise GraderError(f"data.grader {name} raised on each of its first {FIRST_CALLS} samples (last: "
                                  f"{type(e).__name__}: {e}); it takes (solution_str, ground_truth)") from e
            if first.failed == 1:  # a grader for another answer format never sees a box: not silent either way
                log.warning("data.grader %s raised (%s: %s); such samples count as wrong (said once)",
                            getattr(fn, "__name__", fn), type(e).__name__, e)
            raise
        first.ok(boxed)
        if isinstance(r, dict):
            r = r.get("score")
        if hasattr(r, "item") and getattr(r, "shape", None) == ():  # a numpy or torch scalar
            r = r.item()
        if isinstance(r, bool):
            return r
        if isinstance(r, numbers.Real):
            return r >= 1
        raise GraderError(f"data.grader {getattr(fn, '__name__', fn)} returned {r!r}: it must return a bool, a number "
                          f"(right when >= 1) or a dict with 'score'")

    return grade


class Grader:
    """``grade(response, answer) -> bool``: grader ``name`` on the response's ``span`` (see
    ``cot_format.answer_text``: by default the answer after ``</think>``, and no ``</think>`` is wrong); ``many``
    grades a batch at once (math grading: spread over ``workers`` processes, ``timeout_s`` each). Garbage and
    timeouts count as wrong, never as a crash.

    >>> grade = make_grader("exact")
    >>> grade("5 + 3 = \\\\boxed{8} wait", "8"), grade("x</think>The answer is \\\\boxed{8}.", "8")
    (False, True)
    """

    def __init__(self, name: str, span: str = "answer", timeout_s: float = 5.0, workers: int = 2):
        self.base, self.span = get_grader(name), span
        self.timeout_s, self.workers = timeout_s, workers
        answer_text(" ", span)  # validates span now

    def __call__(self, response: str, answer: str) -> bool:
        return self.many([response], [answer])[0]

    def many(self, responses, answers) -> list[bool]:
        texts = [answer_text(r, self.span) for r in responses]
        out = [False] * len(texts)
        todo = [i for i, t in enumerate(texts) if t is not None]
        if self.base is math_match:
            pool = shared_pool(self.workers, self.timeout_s)
            for i, ok in zip(todo, pool.grade([texts[i] for i in todo], [answers[i] for i in todo])):
                out[i] = ok
        else:
            for i in todo:
                out[i] = grade_safely(self.base, texts[i], answers[i])
        return out


def make_grader(name: str, span: str = "answer", timeout_s: float = 5.0, workers: int = 2) -> Grader:
    """The :class:`Grader` for ``data.grader`` / ``data.grade_span`` / ``data.grade_timeout_s`` /
    ``data.grade_workers``."""
    return Grader(name, span, timeout_s, workers)


def grader_of(data) -> Grader:
    """The :class:`Grader` a ``DataConfig`` asks for."""
    return Grader(data.grader, data.grade_span, data.grade_timeout_s, data.grade_workers)


def grade_all(grade, responses, answers) -> list[bool]:
    """``grade`` over pairs: in one batch when it is a :class:`Grader`, else one call each."""
    if hasattr(grade, "many"):
        return grade.many(list(responses), list(answers))
    return [bool(grade(r, a)) for r, a in zip(responses, answers)]
