"""The math grader in worker processes: hung parses are cut, workers replaced, bursts graded in bounded memory."""
import random

import psutil
import pytest

from stepentropy_rl.tasks.grader_pool import MathGraderPool, verify_one

HANG = r"so \boxed{10^{10^{10}}}"  # against 3, math-verify evaluates 10^(10^10): it never returns on its own


def verify_without_timeouts(response, answer, timeout_s):
    """math-verify as the old thread-pool grader ran it: its own timeouts off (they need the main thread)."""
    from math_verify import parse, verify

    return bool(verify(parse(f"${answer}$", parsing_timeout=None), parse(response, parsing_timeout=None),
                       timeout_seconds=None))


def test_a_hung_parse_is_killed_its_worker_replaced_and_later_grades_stay_right():
    """Three hangs on two workers held every thread of the old pool for good; here each is killed at the hard limit
    and the correct samples after them are still graded right."""
    pool = MathGraderPool(workers=2, timeout_s=1, fn=verify_without_timeouts, kill_after_s=2)
    try:
        got = pool.grade([HANG, HANG, HANG, r"\boxed{\frac{1}{2}}", r"\boxed{3}"], ["3", "3", "3", "0.5", "3"])
        assert got == [False, False, False, True, True]
        assert pool.stats["timeouts"] == 3
        assert pool.grade([r"\boxed{4}"], ["4"]) == [True]  # the replaced workers serve
    finally:
        pool.close()


def test_math_verifys_own_alarm_cuts_the_hang_inside_the_worker():
    pool = MathGraderPool(workers=1, timeout_s=1)
    try:
        assert pool.grade([HANG, r"\boxed{3}"], ["3", "3"]) == [False, True]
        assert pool.stats["timeouts"] == 0  # no kill needed: the alarm works in the worker's main thread
    finally:
        pool.close()


def test_a_burst_of_10000_with_garbage_and_1mb_answers_in_bounded_memory():
    rng = random.Random(0)
    huge = [r"\boxed{" + "9" * 1_000_000 + "}", "x^{" * 350_000]  # 1 MB each
    letters = "abcdefghijklmnopqrstuvwxyz{}\\^_ ()[]!?$"
    responses, answers, want = [], [], []
    for i in range(10_000):
        kind = i % 10
        if kind < 5:
            a = rng.randint(0, 99)
            r = rng.choice([a, a + 1])
            responses.append(f"so \\boxed{{{r}}}")
            want.append(r == a)
        elif kind < 8:  # garbage without digits, so that math-verify cannot find an answer in it
            responses.append("".join(rng.choice(letters) for _ in range(60)))
            a = 7
            want.append(False)
        else:
            responses.append(huge[kind - 8])
            a = 7
            want.append(False)
        answers.append(str(a))
    me = psutil.Process()
    others = {p.pid for p in me.children(recursive=True)}  # e.g. a Ray session other tests started
    pool = MathGraderPool(workers=2, timeout_s=2)
    try:
        rss_before = me.memory_info().rss
        got = pool.grade(responses, answers)
        workers = [p for p in me.children(recursive=True) if p.pid not in others]
        assert got == want
        assert pool.stats["clipped"] == 2000 and pool.stats["graded"] == 10_000
        assert me.memory_info().rss - rss_before < 200 * 2**20
        # forked workers share the parent's pages: what each holds of its own (USS) is what a burst could grow
        assert workers and all(w.memory_full_info().uss < 300 * 2**20 for w in workers)
    finally:
        pool.close()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="positive"):
        MathGraderPool(workers=0)
    pool = MathGraderPool(workers=1)
    try:
        with pytest.raises(ValueError, match="responses"):
            pool.grade(["a"], [])
    finally:
        pool.close()


def test_digit_groups_percent_signs_and_two_number_golds_are_graded_by_value():
    """math-verify read 10\\,000 as 10*0 (wrong against 10000, right against 0) and 25\\% as text; a gold with two
    numbers in words ('4 hours 30 minutes') accepted its last number alone."""
    assert verify_one(r"so \boxed{10\,000}", "10000", 2) and not verify_one(r"\boxed{10\,000}", "0", 2)
    assert verify_one(r"\boxed{2\,001\,000}", "2001000", 2) and verify_one(r"\boxed{1 000}", "1000", 2)
    assert verify_one(r"\boxed{25\%}", "25", 2) and verify_one(r"\boxed{25\%}", r"25\%", 2)
    assert verify_one(r"\boxed{72.}", "72", 2) and verify_one(r"\boxed{2\,x}", "2x", 2)
    assert verify_one(r"\boxed{2\ 000}", "2000", 2) and verify_one(r"\boxed{25\%.}", "25", 2)
    assert not verify_one(r"\boxed{30}", "4 hours 30 minutes", 2) and not verify_one(r"\boxed{3}", "2 and 3", 2)
    assert verify_one(r"\boxed{10}", "10 cm^2", 2) and verify_one(r"\boxed{1500}", "1,500 dollars", 2)


def test_verify_one_in_process():
    assert verify_one(r"\boxed{\frac{1}{2}}", "0.5", 2) and not verify_one(r"\boxed{2}", "0.5", 2)
    # a gold answer in words and units, and LaTeX-only ones, each matched and mismatched
    assert verify_one(r"The answer is \boxed{18}", "18 dollars", 2) and not verify_one(r"\boxed{17}", "18 dollars", 2)
    assert verify_one(r"\boxed{\text{(C)}}", r"\text{(C)}", 2)
    assert not verify_one(r"\boxed{\text{(D)}}", r"\text{(C)}", 2)
    assert verify_one(r"\boxed{(1, 2)}", "(1, 2)", 2) and not verify_one(r"\boxed{(2, 1)}", "(1, 2)", 2)


@pytest.mark.parametrize("gold, wrong", [(r"3\sqrt{13}", "3"), (r"\frac 59", "59"), (r"10,\!080", "10"),
                                         ("6 - 5i", "5"), (r"\left( 3, \frac{\pi}{2} \right)", "3"),
                                         ("x^5 - x^4 + x^3 - x^2 + x - 1", "1")])
def test_a_number_inside_a_latex_gold_is_not_a_second_gold(gold, wrong):
    """MATH-500 answers (58 of 500 had one): math-verify's text reading of the gold found a number in it, and that
    number was accepted too. Each gold boxed as written stays right."""
    assert not verify_one(rf"The answer is \boxed{{{wrong}}}.", gold, 2)
    assert verify_one(rf"The answer is \boxed{{{gold}}}.", gold, 2)


def test_a_long_tail_after_the_box_is_not_what_gets_graded():
    """A response longer than max_chars kept its last max_chars characters, so a right box followed by 4k
    characters (a loop after the answer) was graded wrong, and the math and exact graders disagreed."""
    pool = MathGraderPool(workers=1, timeout_s=5.0, max_chars=4096)
    try:
        tail = " and so on." * 500
        assert pool.grade(["\\boxed{3}" + tail, "\\boxed{4}" + tail, tail], ["3", "3", "3"]) == [True, False, False]
        assert pool.stats["clipped"] == 3
    finally:
        pool.close()


def test_only_the_last_box_is_the_answer():
    """No box is wrong (a cut-off answer's last number is not an answer); a corrected answer is its last box."""
    assert not verify_one("She makes 18 dollars.", "18", 2)
    assert not verify_one("9 * 2 = 18", "18", 2)
    assert verify_one(r"First \boxed{17}, but correcting: the answer is \boxed{18}", "18", 2)
    assert not verify_one(r"First \boxed{18}, but correcting: the answer is \boxed{17}", "18", 2)
    assert not verify_one(r"First \boxed{18}. Wait, correcting: the answer is \boxed{17", "18", 2)  # cut off


@pytest.mark.parametrize("gold, boxed, right", [("18 dollars", "18", True), ("10 cm^2", "10", True),
                                                 ("3.5 km/h", "3.5", True), ("5 x", "5", False)])
def test_a_number_in_words_or_units_is_read_as_its_number(gold, boxed, right):
    assert verify_one(rf"\boxed{{{boxed}}}", gold, 2) == right


def test_a_gold_with_digit_groups_is_read_as_its_number():
    """The gaps were joined in the box only: the gold 10\\,000 was read as 10*0, so the right answer was graded wrong
    and \\boxed{0} right."""
    assert verify_one(r"\boxed{10000}", r"10\,000", 2) and not verify_one(r"\boxed{0}", r"10\,000", 2)
    assert verify_one(r"\boxed{1000}", "1 000", 2) and not verify_one(r"\boxed{0}", "1 000", 2)
    assert verify_one(r"\boxed{10\,000}", r"10\,000", 2)


def test_a_constant_after_a_number_is_no_unit_and_a_boxed_unit_is_read_as_the_golds_is():
    """The gold "4 pi" took 4 as a second gold; "\\boxed{18 dollars}" was wrong against 18 (the gold's "18 dollars"
    was right against \\boxed{18})."""
    assert not verify_one(r"\boxed{4}", "4 pi", 2) and not verify_one(r"\boxed{2}", "2 sqrt 3", 2)
    assert verify_one(r"\boxed{18 dollars}", "18", 2) and not verify_one(r"\boxed{17 dollars}", "18", 2)
    assert not verify_one(r"\boxed{4 hours 30 minutes}", "30", 2)


@pytest.mark.parametrize("boxed, gold", [("4 thousand", "4"), ("1.5 million", "1.5"), ("3 dozen", "3"),
                                         ("7 or more", "7"), ("2 and a half", "2"), ("4 Thousand", "4"),
                                         ("2 thousands", "2"), ("4 dozens", "4"), ("3 squared", "3"),
                                         ("2 thirds", "2"), ("18 dollars or more", "18"), ("5 cups or less", "5")])
def test_a_number_scaled_or_qualified_by_its_words_is_not_that_number(boxed, gold):
    """"\\boxed{4 thousand}" was graded right against 4: the words after a number were taken for its unit."""
    assert not verify_one(rf"\boxed{{{boxed}}}", gold, 2)
    assert verify_one(rf"\boxed{{{boxed.split()[0]} apples}}", gold, 2)  # a unit alone still reads as the number
    assert verify_one(rf"\boxed{{{boxed.split()[0]} times}}", gold, 2)  # "how many times": a count, not a product


def _grade_one(response, answer, timeout_s):
    return response == answer


def test_workers_killed_while_idle_are_replaced_at_the_next_grade():
    """pebble's pool broke for good when its workers died between samples (the OOM killer): every later grade raised
    'Unexpected error within the Pool'."""
    import multiprocessing
    import os
    import signal
    import time

    before = {p.pid for p in multiprocessing.active_children()}
    pool = MathGraderPool(workers=1, fn=_grade_one)
    try:
        assert pool.grade(["1"], ["1"]) == [True]
        for child in multiprocessing.active_children():
            if child.pid not in before:
                os.kill(child.pid, signal.SIGKILL)
        time.sleep(1.0)
        assert pool.grade(["1", "2"], ["1", "3"]) == [True, False]
    finally:
        pool.close()


def test_a_worker_stuck_before_its_first_sample_stalls_once_then_is_an_error(monkeypatch):
    """A forked worker deadlocked in its warm-up held grade() for good: pebble starts a sample's clock only when a
    worker takes it up."""
    import time

    from stepentropy_rl.tasks import grader_pool

    monkeypatch.setattr(grader_pool, "_warm_up", lambda: time.sleep(1000))
    pool = MathGraderPool(workers=1, fn=_grade_one, stall_s=2)
    try:
        assert pool.grade(["1"], ["1"]) == [False] and pool.stats["stalls"] == 1
        with pytest.raises(RuntimeError, match="its workers do not start"):
            pool.grade(["1"], ["1"])
    finally:
        pool.close()


def test_a_missing_math_verify_is_one_error_at_the_pools_start(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(ImportError):
        MathGraderPool(workers=1)


@pytest.mark.parametrize("boxed, gold, right", [
    (r"2 \text{ hours } 30 \text{ minutes}", "2", False),  # math-verify read the first number: right against 2
    (r"2 \text{ hours } 30 \text{ minutes}", "150", False),
    (r"2 \text{ hours } 30 \text{ minutes}", "2 hours 30 minutes", True),  # the gold's own words
    (r"6 \text{ and a half}", "6", False), (r"2 \mathrm{ less than } x", "2", False), ("2 less than x", "2", False),
    (r"18 \text{ dollars}", "18", True), (r"5\text{ cm}^2", "5", True), (r"\text{(C)}", r"\text{(C)}", True),
    # what the first version of the fix refused: one-letter units, units with powers, a gold in \text{}, a list
    (r"12\text{ m}", "12", True), (r"12\mathrm{m}", "12", True), (r"9.8\text{ m/s}^2", "9.8", True),
    (r"12 \text{ m}", r"12\text{ m}", True), (r"10 \text{ m}^2", r"10\text{ m}^2", True),
    (r"2 \text{ and } 3", r"2 \text{ and } 3", True), (r"2 \text{ or } 3", "2, 3", True), (r"3\text{ p.m.}", "3", True),
])
def test_words_in_latex_text_are_read_as_the_same_words_written_plainly(boxed, gold, right):
    """A box of numbers and \\text{} words was graded by its first number: "2 hours 30 minutes" right against 2."""
    assert verify_one(rf"\boxed{{{boxed}}}", gold, 2) is right


def test_a_list_answered_one_box_an_item_is_right():
    """R1 often boxes each solution: "\\boxed{-2} and \\boxed{1}" was graded by its last box alone, wrong against
    "-2, 1" in the evaluation, the rewards and the answer check."""
    assert verify_one(r"\boxed{-2} \text{ and } \boxed{1}", "-2, 1", 2)
    assert verify_one(r"\boxed{1}, \boxed{-2}", "-2, 1", 2) and verify_one(r"\boxed{\frac{1}{2}} or \boxed{3}",
                                                                           r"\frac{1}{2}, 3", 2)
    assert not verify_one(r"\boxed{5}, \boxed{1}", "-2, 1", 2)  # a wrong item
    assert not verify_one(r"\boxed{7} \boxed{-2}, \boxed{1}", "-2, 1", 2)  # more boxes than items
    assert not verify_one(r"\boxed{1} \boxed{2}", "(1, 2)", 2)  # a point's coordinates are not two answers
    assert not verify_one(r"\boxed{1}, \boxed{0}", "1,000", 2)  # a number's digit groups are not a list
    # a box taken back is no item: "one box corrected by a later one is graded by the later"
    assert not verify_one(r"So x = \boxed{2}. Wait, that fails the check; the answer is \boxed{3}.", "2, 3", 2)
