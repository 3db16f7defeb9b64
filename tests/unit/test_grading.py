from stepentropy_rl.cot_format import boxed_answer
from stepentropy_rl.tasks.grading import exact_match, get_grader, grade_safely, math_match
import pytest


def test_boxed_answer():
    assert boxed_answer(r"x \boxed{1} y \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert boxed_answer("no box") is None
    assert boxed_answer(r"\boxed{unclosed") is None


def test_exact_match():
    assert exact_match(r"The answer is \boxed{15}.", "15")
    assert not exact_match(r"The answer is \boxed{16}.", "15")
    assert not exact_match("garbage", "15")


def test_math_match_off_main_thread():
    assert math_match(r"so \boxed{\frac{1}{2}}", "0.5")
    assert not math_match(r"so \boxed{3}", "0.5")
    assert not math_match("\x00\x01 garbage {{{", "2")


def test_unknown_grader():
    with pytest.raises(ValueError, match="data.grader"):
        get_grader("fuzzy")


def test_grade_safely_turns_a_crashing_grader_into_wrong():
    def broken(response, answer):
        raise RuntimeError("parser blew up")

    assert grade_safely(broken, "x", "1") is False
    assert grade_safely(exact_match, r"\boxed{1}", "1") is True


def test_a_registered_grader_is_usable_by_name():
    import pytest

    from stepentropy_rl.tasks.grading import GRADERS, get_grader, make_grader, register_grader

    @register_grader("lenient_test")
    def lenient(response, answer):
        return answer in response

    try:
        assert get_grader("lenient_test") is lenient
        assert make_grader("lenient_test")("x </think> it is 42", "42") is True
        with pytest.raises(ValueError, match="already registered"):
            register_grader("exact")(lenient)
    finally:
        GRADERS.pop("lenient_test")


def test_a_user_grader_reads_numpy_and_dict_verdicts_and_a_broken_one_stops_the_run():
    """np.isclose's np.True_, np.int64(1) and verl's {"score": 1.0} were all graded wrong; a grader with a wrong
    signature raised on every sample and was swallowed: accuracy 0, no word."""
    import numpy as np
    import pytest

    from stepentropy_rl.tasks.grading import FIRST_CALLS, GraderError, Grader, user_grader

    for verdict, right in ((np.True_, True), (np.False_, False), (np.int64(1), True), (np.float64(0.2), False),
                           ({"score": 1.0}, True), ({"score": 0}, False)):
        assert user_grader(lambda s, g, v=verdict: v)("x", "y") is right
    with pytest.raises(GraderError, match="returned 'yes'"):
        user_grader(lambda s, g: "yes")("x", "y")
    with pytest.raises(GraderError, match=r"cannot take \(solution_str, ground_truth\)"):
        user_grader(lambda s, g, extra: True)  # verl's 4-argument compute_score given as a grader: told at once
    grader = Grader("exact")
    grader.base = user_grader(lambda s, g: 1 / 0)  # right signature, broken on every answer
    with pytest.raises(GraderError, match=f"raised on each of its first {FIRST_CALLS} samples .*ZeroDivisionError"):
        grader.many(["x</think>\\boxed{1}"] * (FIRST_CALLS + 1), ["1"] * (FIRST_CALLS + 1))
    boxed = user_grader(lambda s, g: s.split("{")[1].rstrip("}") == g)  # raises on responses without a box
    assert all(grade_safely(boxed, "garbage", "1") is False for _ in range(FIRST_CALLS + 2))  # not 'broken'
    assert boxed("\\boxed{1}", "1")
    flaky = user_grader(lambda s, g: int(s) >= 1)  # right on numbers, raises on garbage after a first success
    assert flaky("1", "1") and all(grade_safely(flaky, "garbage", "1") is False for _ in range(FIRST_CALLS + 2))


def test_the_box_scan_finds_what_the_brace_matching_defines():
    """boxed_span matches braces in one pass (it rescanned the rest of the text for each box that never closes:
    minutes for a 4k-token response of unclosed boxes, in the reward actor); on random texts it returns what
    scanning each box to its matching brace returns, first and last."""
    import random

    from stepentropy_rl.cot_format import BOXED, boxed_span

    def by_definition(text, start, last):
        found = []
        for i in (k for k in range(start, len(text)) if text.startswith(BOXED, k)):
            depth = 1
            for j in range(i + len(BOXED), len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    found.append((i, j))
                    break
        return (found[-1] if last else found[0]) if found else None

    rng = random.Random(0)
    pieces = [BOXED, "{", "}", "3", " ", "\\frac{1}{2}"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        start = rng.randint(0, len(text))
        for last in (False, True):
            assert boxed_span(text, start, last) == by_definition(text, start, last), (text, start, last)
    assert boxed_span("x</think>" + BOXED * 3000) is None


def test_a_user_graders_failures_are_said_once_even_where_no_answer_is_boxed(caplog):
    """A grader for another answer format ("Answer: B") never sees a box, so a bug in it never counted toward the
    broken-grader stop: every sample was wrong, 0% accuracy, and nothing said."""
    from stepentropy_rl.tasks.grading import FIRST_CALLS, user_grader

    letter = user_grader(lambda s, g: {"B": 1}[s.split("Answer: ")[1]] == g)  # a KeyError on every letter but B
    with caplog.at_level("WARNING", logger="stepentropy_rl.tasks.grading"):
        assert all(grade_safely(letter, "Answer: C", "1") is False for _ in range(FIRST_CALLS + 2))
    said = [r.getMessage() for r in caplog.records if "raised" in r.getMessage()]
    assert len(said) == 1 and "KeyError" in said[0] and "count as wrong" in said[0]
