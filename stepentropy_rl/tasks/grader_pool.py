"""math-verify in worker processes with real timeouts.

Why processes: math-verify's own timeouts use ``signal.alarm``, which works only in a main thread, and a thread pool
with them off holds a hung parse (``\\boxed{10^{10^{10}}}`` against ``3`` never returns) for good, so that every later
grade times out. Here each sample runs in a pebble worker process, math-verify's alarms on inside it; a worker that
has not answered ``kill_after_s`` after it started is killed and replaced, and the sample counts as wrong. Responses
are clipped to their last ``max_chars`` characters (where the final answer is) and at most ``window`` samples are in
flight, so a burst of huge answers is graded in bounded memory.

Workers are forked: spawn and forkserver re-run the caller's main module in each worker, which breaks any script
without a ``__main__`` guard. A forked worker that deadlocks on a lock another thread held at the fork, in a sample,
is caught by the same hard limit and replaced; before its first sample (pebble starts a sample's clock when a worker
takes it up), by ``stall_s``: the pool is made anew. A pool whose workers all died while idle is made anew at the next
sample (pebble's stays broken).
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import importlib
import logging
import multiprocessing
import re
from collections import deque

from pebble import ProcessPool

log = logging.getLogger(__name__)


def _warm_up() -> None:
    """Once per worker, before its first sample's clock starts: import math-verify (1.2 s) and grade one sample (its
    first grade builds the parsers: 0.3 s on an idle core, past a 2 s ``kill_after_s`` on a loaded one)."""
    math_verify = importlib.import_module("math_verify")
    math_verify.verify(math_verify.parse("$1$"), math_verify.parse(r"\boxed{\frac{1}{2}}"))


# one number followed by words or a unit ("18 dollars", "10 cm^2"): read as LaTeX alone it is a product of letters
# that no response matches; one letter ("5 x") is a product, and so is a constant or a function ("4 pi", "2 sqrt 3").
# Only one number: "4 hours 30 minutes" is no number; nor is one that its words scale, raise, divide or qualify
# anywhere after it ("4 thousand", "2 thousands", "3 squared", "2 thirds", "18 dollars or more")
QUALIFIER_WORDS = (r"(?:(?:hundred|thousand|million|billion|trillion|dozen)s?|squared|cubed|half|halves|thirds?|"
                   r"quarters?|fifths?|tenths?|than)")
NUMBER_IN_WORDS = re.compile(r"\s*([-+]?\d[\d,]*(?:\.\d+)?)\s+(?!(?:pi|sqrt|sin|cos|tan|log|ln|exp|e)\b)"
                             rf"(?!.*\b(?:{QUALIFIER_WORDS}|or|and)\b)"
                             r"[A-Za-z]{2,}(?:[A-Za-z ./]|\^\d+)*", re.IGNORECASE)
# words in a box written as LaTeX text: \boxed{2 \text{ hours } 30 \text{ minutes}} is no more the number 2 than
# the same words written plainly, but math-verify reads the first number of it
TEXT_WORDS = re.compile(r"\\(?:text|textrm|textnormal|mathrm|mbox|rm)\s*\{([^{}]*)\}")
NUMBER_THEN_WORDS = re.compile(r"\s*[-+]?\d[\d,]*(?:\.\d+)?\s*[A-Za-z]")
QUALIFIERS = re.compile(rf"\b{QUALIFIER_WORDS}\b", re.IGNORECASE)  # "2 or 3" is a list, not a qualified number
# a number, a word that is no conjunction, another number: "2 hours 30 minutes" (exponents taken out first: m/s^2)
MIXED_QUANTITY = re.compile(r"\d[^\d]*?\b(?!(?:and|or)\b)[A-Za-z]+\b[^\d]*\d")
EXPONENT = re.compile(r"\^\s*(?:\{\s*[-+]?\d+\s*\}|[-+]?\d)")
# what may stand between the boxes of a list answered one box an item: commas, "and", "or", spaces
BOX_SEPARATOR = re.compile(r"(?:\s|,|;|\\[,;: ]|\\quad|\b(?:and|or)\b|\\text\s*\{\s*(?:,|and|or)?\s*\})*")
LIST_COMMA = re.compile(r",(?!\d{3}(?!\d))")  # a comma between a list's items, not in 1,000
# digit groups set apart by a thin or other LaTeX space, a tie or a space (10\,000): math-verify reads a product
DIGIT_GROUP_GAP = re.compile(r"(?<=\d)(?:\s*\\[,;:! ]\s*|~|\s+)(?=\d{3}(?!\d))")


def plain_box(box: str, answer: str) -> str:
    """``box`` (``\\boxed{...}``) as math-verify should read it: digit groups joined (it read ``10\\,000`` as
    10*0, graded right against 0), a trailing percent sign dropped where the gold has none (GSM8K's percentages are
    bare numbers; math-verify reads ``25\\%`` as text) and a full stop after a final digit dropped (``72.``).

    >>> plain_box(r"\\boxed{10\\,000}", "10000"), plain_box(r"\\boxed{25\\%}", "25"), plain_box(r"\\boxed{72.}", "72")
    ('\\\\boxed{10000}', '\\\\boxed{25}', '\\\\boxed{72}')
    >>> plain_box(r"\\boxed{25\\%}", r"25\\%"), plain_box(r"\\boxed{2\\,x}", "2x")
    ('\\\\boxed{25\\\\%}', '\\\\boxed{2\\\\,x}')
    >>> plain_box(r"\\boxed{(1, 234)}", "(1,234)")
    '\\\\boxed{(1, 234)}'
    """
    inner, was = DIGIT_GROUP_GAP.sub("", box[len("\\boxed{"): -1]), None
    while inner != was:  # "25\\%." loses both
        was = inner
        if "%" not in answer:
            inner = re.sub(r"\s*\\?%\s*$", "", inner)
        inner = re.sub(r"(?<=[\d%])\.\s*$", "", inner)
    return "\\boxed{" + inner + "}"


def verify_one(response: str, answer: str, timeout_s: float) -> bool:
    """math-verify equivalence of the last ``\\boxed{}`` in ``response`` to ``answer`` with math-verify's own (alarm)
    timeouts; run in a worker. No box, or a last box that never closes, is wrong, as with the exact grader:
    math-verify would otherwise grade the last number written (a cut-off answer), an earlier box (a correction cut
    off), or the set of all boxes (a corrected answer wrong). The gold is read as
    LaTeX (``$answer$``: ``\\text{(C)}``, tuples, ``3\\sqrt{13}``), and also as text only when it is a number in
    words: math-verify's text reading of a LaTeX gold adds a number it finds in it as a second gold (``3\\sqrt{13}``
    accepted 3; 58 of MATH-500's 500 answers had one)."""
    from math_verify import parse, verify

    from stepentropy_rl.cot_format import BOXED, boxed_span

    box = boxed_span(response, max(0, response.rfind(BOXED)))
    if box is None:
        return False
    budget = max(1, int(timeout_s))
    answer = DIGIT_GROUP_GAP.sub("", answer)  # a gold's digit groups as a box's: "10\,000" is 10000, not 10*0
    gold = parse(f"${answer}$", parsing_timeout=budget)
    if words := NUMBER_IN_WORDS.fullmatch(answer):
        gold += parse(f"${words.group(1)}$", parsing_timeout=budget)
    plain = plain_box(response[box[0]: box[1] + 1], answer)
    said = _words(plain[len(BOXED): -1])  # \text{...} as the words it writes
    if said != " ".join(plain[len(BOXED): -1].split()) and NUMBER_THEN_WORDS.match(said):  # a number, LaTeX words
        if said.lower() == _words(answer).lower():
            return True
        if QUALIFIERS.search(said) or MIXED_QUANTITY.search(EXPONENT.sub("", said)):  # "6 and a half", "2 hours 30
            return False  # minutes": not the first number, as when the same words are written plainly
    pred = parse(plain, parsing_timeout=budget)
    if words := NUMBER_IN_WORDS.fullmatch(plain[len(BOXED): -1]):  # "\boxed{18 dollars}" read as a gold in words is
        pred += parse(f"${words.group(1)}$", parsing_timeout=budget)
    if verify(gold, pred, timeout_seconds=budget):
        return True
    items = len(LIST_COMMA.split(answer))
    if items > 1 and not any(c in answer for c in "()[]"):  # a list (not a point or an interval) answered one box
        run = _last_boxes(response)  # an item: "\boxed{-2} and \boxed{1}" for "-2, 1"
        if len(run) == items:
            joined = parse(plain_box(f"{BOXED}{', '.join(run)}}}", answer), parsing_timeout=budget)
            return bool(verify(gold, joined, timeout_seconds=budget))
    return False


def _words(latex: str) -> str:
    """``latex`` with its ``\\text{...}`` written as the words, whitespace collapsed."""
    return " ".join(TEXT_WORDS.sub(r" \1 ", latex).split())


def _last_boxes(response: str) -> list[str]:
    """The contents of the closed boxes that end ``response``'s boxes with nothing but commas, "and", "or" or spaces
    between them: a box the model took back before a later one (``\\boxed{2}. Wait, ... \\boxed{3}``) is no item."""
    from stepentropy_rl.cot_format import BOXED, boxed_span

    spans, at = [], 0
    while (b := boxed_span(response, at)) is not None:
        spans.append(b)
        at = b[1] + 1
    run = spans[-1:]
    for before, after in zip(reversed(spans[:-1]), reversed(spans[1:])):
        if not BOX_SEPARATOR.fullmatch(response[before[1] + 1: after[0]]):
            break
        run.insert(0, before)
    return [response[a + len(BOXED): b] for a, b in run]


class MathGraderPool:
    """``grade(responses, answers) -> list[bool]`` on ``workers`` processes; failures and timeouts are ``False``.

    ``stats`` counts what went wrong since the pool was made: ``timeouts`` (workers killed), ``errors`` (a sample
    that made math-verify raise, or lost its worker), ``stalls`` (samples no worker took up within ``stall_s``: the
    pool was made anew) and ``clipped`` (responses longer than ``max_chars``). Workers that never start (two stalls
    in a row, nothing graded between) are a RuntimeError."""

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, max_chars: int = 4096, window: int | None = None,
                 fn=verify_one, kill_after_s: float | None = None, stall_s: float | None = None):
        if workers < 1 or timeout_s <= 0 or max_chars < 1:
            raise ValueError(f"workers, timeout_s and max_chars must be positive, got {workers}, {timeout_s}, "
                             f"{max_chars}")
        importlib.import_module("math_verify")  # missing, it fails here, once, not in every worker's warm-up
        self.timeout_s, self.max_chars, self.fn, self.workers = timeout_s, max_chars, fn, workers
        # gold parse + response parse + verify may each take timeout_s; past that the worker is killed
        self.kill_after_s = kill_after_s or 3 * timeout_s + 2
        self.window = window or 4 * workers
        # a sample waits for the ones queued before it (window / workers of them, each at most kill_after_s) and for
        # a worker's warm-up; past that, its worker is stuck before its first sample
        self.stall_s = stall_s or self.kill_after_s * (self.window // workers + 2) + 60
        self.stats = {"graded": 0, "timeouts": 0, "errors": 0, "stalls": 0, "clipped": 0}
        self._stalled = False  # the last sample stalled and none was graded since
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPool:
        return ProcessPool(max_workers=self.workers, initializer=_warm_up, context=multiprocessing.get_context("fork"))

    def _renew(self, why: str) -> None:
        log.warning("math grader: %s; its workers are started anew", why)
        self._pool.stop()
        self._pool.join(timeout=10)
        self._pool = self._new_pool()

    def _submit(self, response: str, answer: str):
        response, answer = str(response), str(answer)
        if len(response) > self.max_chars:  # the last box and what follows it: the worker grades that box
            self.stats["clipped"] += 1
            from stepentropy_rl.cot_format import BOXED

            box = response.rfind(BOXED)
            response = response[box: box + self.max_chars] if box >= 0 else ""
        if not self._pool.active:  # every worker died while idle (killed for memory): pebble's pool stays broken
            self._renew("its workers died while idle")
        return self._pool.schedule(self.fn, args=(response, answer[: self.max_chars], self.timeout_s),
                                   timeout=self.kill_after_s)

    def _result(self, fut) -> bool:
        self.stats["graded"] += 1
        try:
            right = bool(fut.result(timeout=self.stall_s))
            self._stalled = False
            return right
        except cf.TimeoutError:
            if fut.done():
                self.stats["timeouts"] += 1
                self._stalled = False
            else:  # no worker took it up: one stuck before its first sample (a fork's deadlock in its warm-up)
                self.stats["stalls"] += 1
                if self._stalled:
                    raise RuntimeError(f"math grader: no worker took up a sample within {self.stall_s:.0f} s, twice "
                                       f"in a row with the pool started anew between: its workers do not start "
                                       f"(math-verify's import or first grade hangs in a worker?)") from None
                self._stalled = True
                self._renew(f"a sample waited {self.stall_s:.0f} s for a worker")
        except Exception:  # garbage that makes math-verify raise, or a worker that died: wrong, never a crash
            self.stats["errors"] += 1
        return False

    def grade(self, responses, answers) -> list[bool]:
        """One bool per pair, in order; at most ``window`` samples are in the workers' queue at once."""
        responses, answers = list(responses), list(answers)
        if len(responses) != len(answers):
            raise ValueError(f"got {len(responses)} responses for {len(answers)} answers")
        before, errors = self.stats["timeouts"], self.stats["errors"]
        out: list[bool] = [False] * len(responses)
        pending: deque = deque()
        for i, (r, a) in enumerate(zip(responses, answers)):
            if len(pending) >= self.window:
                j, fut = pending.popleft()
                out[j] = self._result(fut)
            pending.append((i, self._submit(r, a)))
        while pending:
            j, fut = pending.popleft()
            out[j] = self._result(fut)
        if self.stats["timeouts"] > before:
            log.warning("math grader: %d of %d samples hit the %.0f s limit and count as wrong; their workers were "
                        "replaced", self.stats["timeouts"] - before, len(responses), self.kill_after_s)
        if self.stats["errors"] > errors:
            log.warning("math grader: %d of %d samples made math-verify raise or lost their worker, and count as wrong",
                        self.stats["errors"] - errors, len(responses))
        return out

    def close(self) -> None:
        self._pool.stop()
        self._pool.join()


_POOLS: dict[tuple, MathGraderPool] = {}


def shared_pool(workers: int = 2, timeout_s: float = 5.0) -> MathGraderPool:
    """This process's pool for ``(workers, timeout_s)``, made on first use and stopped at exit."""
    key = (workers, timeout_s)
    if key not in _POOLS:
        _POOLS[key] = MathGraderPool(workers, timeout_s)
    return _POOLS[key]


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()
