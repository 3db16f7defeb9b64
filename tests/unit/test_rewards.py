"""Reward terms, `make_sample`, `RewardFn` composition and the two Hydra presets."""
import math
import os

import pytest
from omegaconf import OmegaConf

from stepentropy_rl.typed import ConfigError
from stepentropy_rl.rewards import (TERMS, RewardFn, Sample, TermSpec, correctness, exp_length, format_reward,
                                    from_config, length_clip, length_threshold, make_sample, register_term,
                                    skip_count, skip_ratio, stage_rewards)

SKIP = 99
CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf", "reward")


def test_correctness():
    assert correctness(Sample(correct=True)) == 2.0
    assert correctness(Sample(correct=False)) == 0.0
    assert correctness(Sample(correct=True), value=1.0) == 1.0


@pytest.mark.parametrize("n_skip,n_steps,want", [(8, 2, 1.0), (79, 21, 0.5), (5, 5, 0.5), (49, 51, 0.0),
                                                 (10, 0, 1.0), (0, 7, 0.0), (0, 0, 0.0)])
def test_skip_ratio_boundaries(n_skip, n_steps, want):
    assert skip_ratio(Sample(n_skip=n_skip, n_steps=n_steps)) == want


def test_skip_ratio_rejects_low_above_high():
    with pytest.raises(ValueError, match="low"):
        skip_ratio(Sample(), high=0.4, low=0.6)


def test_graded_skip_ratio_rewards_every_extra_skip_and_is_an_option():
    """``graded``: r = r_hi * min(rho / high, 1); the tiers give 0.5 to rho = 0.5 and 0.6 alike (one [SKIP] per gap
    puts every sample of a group there), the graded variant tells them apart. Off by default; a non-bool is named."""
    assert skip_ratio(Sample(n_skip=5, n_steps=5)) == skip_ratio(Sample(n_skip=6, n_steps=4)) == 0.5
    assert skip_ratio(Sample(n_skip=5, n_steps=5), graded=True) == pytest.approx(0.625)
    assert skip_ratio(Sample(n_skip=6, n_steps=4), graded=True) == pytest.approx(0.75)
    assert skip_ratio(Sample(n_skip=0, n_steps=4), graded=True) == 0.0
    with pytest.raises(ValueError, match="graded"):
        stage_rewards({"stages": {"compress": [{"name": "skip_ratio", "params": {"graded": "maybe"}}]}})


def test_skip_count_and_length_threshold_boundaries():
    assert skip_count(Sample(n_skip=100)) == 0.0
    assert skip_count(Sample(n_skip=101)) == -2.0
    assert length_threshold(Sample(length=3500)) == 0.0
    assert length_threshold(Sample(length=3501)) == -1.0


def test_exp_length_shape():
    L, r = 1000, 0.2
    assert exp_length(Sample(length=0, correct=True), L=L, r=r) == pytest.approx(1.0)
    assert exp_length(Sample(length=L, correct=True), L=L, r=r) == pytest.approx(r)
    vals = [exp_length(Sample(length=x, correct=True), L=L, r=r) for x in range(0, 3000, 100)]
    assert all(a > b for a, b in zip(vals, vals[1:]))
    assert exp_length(Sample(length=0, correct=True), L=L, scale=3.0) == pytest.approx(3.0)
    assert exp_length(Sample(length=10, correct=False), L=L) == 0.0
    assert exp_length(Sample(length=0, correct=False), L=L, only_correct=False) == pytest.approx(1.0)


@pytest.mark.parametrize("params,name", [({"L": 100, "r": 1.0}, "r"), ({"L": 100, "r": 0.0}, "r"),
                                         ({"L": 100, "r": float("nan")}, "r"), ({"L": 0}, "L"), ({"L": -5}, "L")])
def test_exp_length_validation(params, name):
    with pytest.raises(ValueError, match=f"exp_length.{name}"):
        exp_length(Sample(correct=True), **params)


def test_length_clip_and_format():
    assert length_clip(Sample(answer_pos=10), L=10) == 1.0
    assert length_clip(Sample(answer_pos=11), L=10) == 0.0
    assert length_clip(Sample(answer_pos=None, length=3), L=10) == 0.0
    assert format_reward(Sample(answered=True, closed=True)) == 0.5
    assert format_reward(Sample(answered=False, closed=True)) == 0.0


def test_make_sample_counts_skips_from_ids_when_text_lacks_them():
    ids = [1, SKIP, 2, SKIP, SKIP, 3, 4]
    full = "step one\n\n[SKIP]\n\nstep two\n\n[SKIP]\n\n[SKIP]\n\n</think>\n\nThe answer is \\boxed{7}."
    stripped = full.replace("[SKIP]", "")  # as decoded with skip_special_tokens=True
    for text in (full, stripped):
        s = make_sample(ids, text, True, skip_id=SKIP)
        assert (s.n_skip, s.n_steps, s.length, s.answered) == (3, 2, 7, True)
        assert s.answer_pos == 7  # no </think> id given: the whole response counts as thinking
        assert s.response_ids == tuple(ids)


def test_skips_written_after_the_thinking_earn_no_skip_ratio():
    """Padding the answer with [SKIP] skips no step: with the tiers (rho >= 0.5 pays 0.5) two trailing skips would
    lift a response with no skip in its thinking from 0 to the low tier."""
    close = 7
    text = "a\n\nb</think>\\boxed{3}[SKIP][SKIP]"
    padded = make_sample([10, 11, close, 12, SKIP, SKIP], text, True, skip_id=SKIP, close_id=close)
    assert padded.n_skip == 0 and skip_ratio(padded) == 0.0
    thinking = make_sample([10, SKIP, close, 12], "a\n\n[SKIP]</think>\\boxed{3}", True, skip_id=SKIP, close_id=close)
    assert thinking.n_skip == 1 and skip_ratio(thinking) == 0.5
    # </think> sampled in pieces: the ids hold no close id, so every id counted as thinking and the padding paid
    pieces = make_sample([10, 11, 20, 21, 22, 12] + [SKIP] * 8, "a\n\nb</think>\\boxed{3}" + "[SKIP]" * 8, True,
                         skip_id=SKIP, close_id=close)
    assert pieces.answered and pieces.n_skip == 0 and skip_ratio(pieces) == 0.0


def test_make_sample_unclosed_think_and_no_answer():
    s = make_sample([1, 2, 3], "a\n\nb\n\n\\boxed{3}\n\nc", False, skip_id=SKIP)
    assert s.n_steps == 4 and not s.answered and s.answer_pos is None  # unclosed: whole text is thinking
    s = make_sample([1, 2], "a\n\n  \n\nb</think>no box here", False, skip_id=SKIP)
    assert s.n_steps == 2 and not s.answered and s.answer_pos is None
    s = make_sample([1], "a</think>\\boxed{unclosed", False, skip_id=SKIP)
    assert not s.answered
    s = make_sample([1], "<think>\na\n\n[SKIP] [SKIP]\n\n</think>\\boxed{1}", True, skip_id=SKIP)
    assert s.n_steps == 1 and s.answered


def test_make_sample_answer_pos_is_the_thinking_length_from_the_close_id():
    """Length clipping gates on "answer within L tokens": the </think> id's index, not the response length."""
    close = 99
    ids = [10, 11, 12, close, 13, 14, 15, 16]
    text = "ab\n\nc</think>The \\boxed{4}"
    s = make_sample(ids, text, True, skip_id=SKIP, close_id=close)
    assert (s.answer_pos, s.length) == (3, 8)
    assert length_clip(s, L=3) == 1.0 and length_clip(s, L=2) == 0.0
    # the tag sampled in pieces (its id absent): the whole response counts as thinking
    assert make_sample([10, 11, 12, 13], text, True, skip_id=SKIP, close_id=close).answer_pos == 4


def test_reward_fn_keys_weights_and_gate():
    fn = RewardFn([TermSpec("length_clip", params={"L": 50}, gate=True),
                   TermSpec("correctness", weight=0.5), TermSpec("format_reward")])
    out = fn(Sample(correct=True, answered=True, closed=True, answer_pos=50, length=60))
    assert set(out) == {"length_clip", "correctness", "format_reward", "total"}
    assert out["correctness"] == 1.0 and out["total"] == pytest.approx(1.5)
    out = fn(Sample(correct=True, answered=True, closed=True, answer_pos=51, length=60))
    assert out["length_clip"] == 0.0 and out["total"] == 0.0 and out["correctness"] == 1.0
    assert fn(Sample(correct=True))["total"] == 0.0  # no answer at all


def test_an_answer_is_looked_for_after_the_close_tag_however_the_thinking_opens():
    """With spaces and a <think> before the thinking, the box search started inside it: a box in the thinking made
    an answer-less response 'answered' (length_clip passed, the format reward paid)."""
    s = make_sample([1, 2, 3], " " * 12 + "<think>a \\boxed{3}</think>", False, skip_id=99)
    assert not s.answered and format_reward(s) == 0.0
    assert make_sample([1], "<think>a</think>\\boxed{3}", False, skip_id=99).answered


def test_answered_is_what_the_grader_reads_the_last_box():
    """The format reward and the length-clip gate paid an answer whose first box closed and whose last did not, which
    every grader reads as no answer (the last \\boxed{ decides)."""
    from stepentropy_rl.cot_format import answer_text, boxed_answer

    for text in ("a</think>The answer is \\boxed{3}. Actually \\boxed{4", "a</think>\\boxed{3} or \\boxed{4}",
                 "a \\boxed{9}</think>none", "a</think>\\boxed{}", "a</think>\\boxed{3"):
        s = make_sample([1], text, False, skip_id=SKIP)
        assert s.answered == (boxed_answer(answer_text(text)) is not None), text
    contradicted = make_sample([1, 2], "a</think>\\boxed{3}. Actually \\boxed{4", False, skip_id=SKIP, close_id=2)
    assert not contradicted.answered and format_reward(contradicted) == 0.0 and length_clip(contradicted, L=5) == 0.0


def test_a_right_answer_without_a_box_is_an_answer():
    """A grader that reads unboxed answers (a user's, or math-verify's "The answer is 4") or the whole response
    (grade_span=all) graded it right, but the length-clip gate and the format reward looked for a box after
    </think> only: the compress stage scored every such right answer 0 and trained on nothing."""
    fns = stage_rewards(_load("entropy_guided").reward)
    unboxed = make_sample([1, 2, 7, 3], "a\n\nb</think>Answer: 42", True, skip_id=SKIP, close_id=7)
    assert unboxed.answered and unboxed.answer_pos == 2
    assert length_clip(unboxed, L=2) == 1.0 and length_clip(unboxed, L=1) == 0.0 and format_reward(unboxed) == 0.5
    assert fns["compress"](unboxed)["total"] > 0
    unclosed = make_sample([1, 2, 3], "a\n\nso \\boxed{42}", True, skip_id=SKIP, close_id=7)  # grade_span=all
    assert unclosed.answered and unclosed.answer_pos == 3 and fns["compress"](unclosed)["total"] > 0
    assert format_reward(unclosed) == 0.0  # the format is a closed thinking: nothing else pays for closing it
    wrong = make_sample([1, 2, 7, 3], "a\n\nb</think>Answer: 41", False, skip_id=SKIP, close_id=7)
    assert not wrong.answered and fns["compress"](wrong)["total"] == 0.0


@pytest.mark.parametrize("body,want", [("True", 1.0), ("False", 0.0), ("__import__('numpy').bool_(True)", 1.0),
                                       ("{'score': True, 'acc': 1}", 1.0), ("1", 1.0)])
def test_a_users_scorer_may_return_a_bool_as_in_verl(tmp_path, body, want):
    from stepentropy_rl.rewards import _CUSTOM_CALLS

    (tmp_path / "s.py").write_text(f"def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                                   f"    return {body}\n")
    fn = from_config([{"name": "custom", "params": {"path": str(tmp_path / "s.py")}}])
    assert fn(make_sample([1], "x</think>\\boxed{3}", True, skip_id=99, ground_truth="3"))["custom"] == want
    _CUSTOM_CALLS.clear()


def test_a_users_scorer_that_fails_on_garbage_scores_it_zero_and_one_that_always_fails_stops(tmp_path, caplog):
    """A verl-style compute_score that reads the box with re.search(...).group(1) raised on a response without one
    and the exception ended the GRPO step; now such samples score 0 (one warning), and a scorer raising on each of
    the first 10 answered samples is an error naming it."""
    from stepentropy_rl.rewards import _CUSTOM_CALLS, make_sample
    from stepentropy_rl.tasks.grading import FIRST_CALLS

    (tmp_path / "score.py").write_text(
        "import re\n"
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return float(re.search(r'boxed\\{(.*)\\}', solution_str.split('</think>')[1]).group(1) == ground_truth)\n"
        "def broken(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    raise RuntimeError('a typo')\n"
        "def two_args(data_source, solution_str):\n"
        "    return 1.0\n"
        "def nan_on_garbage(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return float('nan') if 'boxed' not in solution_str else 1.0\n"
        "def nothing(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return None\n")
    fn = from_config([{"name": "custom", "params": {"path": str(tmp_path / "score.py")}}])
    garbage = make_sample([1], "x</think>no box", False, skip_id=99, ground_truth="3")
    right = make_sample([1], "x</think>\\boxed{3}", True, skip_id=99, ground_truth="3")
    assert [fn(garbage)["custom"] for _ in range(FIRST_CALLS + 1)] == [0.0] * (FIRST_CALLS + 1)
    assert fn(right)["custom"] == 1.0 and "such samples score 0" in caplog.text
    broken = from_config([{"name": "custom", "params": {"path": str(tmp_path / "score.py"), "name": "broken"}}])
    for _ in range(FIRST_CALLS - 1):
        assert broken(right)["custom"] == 0.0
    with pytest.raises(ConfigError, match=f"broken\\(\\) raised on each of the first {FIRST_CALLS} answered samples"):
        broken(right)  # a config error: the run stops with one line, as for a broken grader (it ended in a traceback)
    with pytest.raises(ValueError, match=r"two_args\(\) cannot take \(data_source, solution_str, ground_truth"):
        from_config([{"name": "custom", "params": {"path": str(tmp_path / "score.py"), "name": "two_args"}}])
    # no finite number on one garbage sample ended the run; now it scores 0 as a raise does, and always none stops
    nan = from_config([{"name": "custom", "params": {"path": str(tmp_path / "score.py"), "name": "nan_on_garbage"}}])
    assert nan(garbage)["custom"] == 0.0 and nan(right)["custom"] == 1.0
    nothing = from_config([{"name": "custom", "params": {"path": str(tmp_path / "score.py"), "name": "nothing"}}])
    for _ in range(FIRST_CALLS - 1):
        assert nothing(right)["custom"] == 0.0
    with pytest.raises(ValueError, match=r"nothing\(\) raised on each of the first .*returned must be a finite"):
        nothing(right)
    _CUSTOM_CALLS.clear()


def test_reward_fn_config_errors():
    with pytest.raises(ValueError, match=r"reward.terms\[1\].name: unknown term 'nope'; known: .*correctness"):
        from_config([{"name": "correctness"}, {"name": "nope"}])
    with pytest.raises(ValueError, match=r"reward.terms\[0\].params: .*exp_length.r"):
        from_config([{"name": "exp_length", "params": {"L": 10, "r": 2.0}}])
    with pytest.raises(ValueError, match=r"reward.terms\[0\].params"):
        from_config([{"name": "exp_length"}])  # L is required
    with pytest.raises(ValueError, match=r"reward.terms\[0\].params"):
        from_config([{"name": "correctness", "params": {"valu": 1.0}}])
    with pytest.raises(ValueError, match="duplicate"):
        from_config([{"name": "correctness"}, {"name": "correctness"}])
    # numbers that the all-zero probe sample never reads: they failed at the first right sample, or made NaN totals
    for name, params, bad in (("correctness", {"value": "abc"}, "correctness.value"),
                              ("correctness", {"value": math.nan}, "correctness.value"),
                              ("skip_ratio", {"high_reward": "abc"}, "skip_ratio.high_reward"),
                              ("skip_count", {"limit": math.nan}, "skip_count.limit"),
                              ("length_threshold", {"limit": -5}, "length_threshold.limit"),
                              ("exp_length", {"L": 10, "scale": math.inf}, "exp_length.scale"),
                              ("format_reward", {"value": [1, 2]}, "format_reward.value")):
        with pytest.raises(ValueError, match=rf"reward.terms\[0\].params: {bad} must be a finite number"):
            from_config([{"name": name, "params": params}])
    with pytest.raises(ValueError, match="unknown key"):
        from_config([{"name": "correctness", "wieght": 2.0}])


def test_register_term():
    @register_term("_test_const")
    def _const(s, *, c=3.0):
        return c

    try:
        assert from_config([{"name": "_test_const", "weight": 2.0}])(Sample())["total"] == 6.0
        with pytest.raises(ValueError):
            register_term("_test_const")(_const)
        for column in ("total", "correct", "length", "n_skip", "answered"):  # the reward service's own columns
            with pytest.raises(ValueError, match="reserved"):
                register_term(column)(_const)
    finally:
        TERMS.pop("_test_const")


def _load(name):
    cfg = OmegaConf.create({"reward": OmegaConf.load(os.path.join(CONF, f"{name}.yaml"))})
    OmegaConf.resolve(cfg)
    return cfg


def test_step_entropy_preset():
    cfg = _load("step_entropy")
    fns = stage_rewards(cfg.reward)
    assert set(fns) == {"compress", "explore"}
    # 2 real steps + 8 skips -> ratio 0.8; 3600 tokens > 3500.
    ids = [1] * 3592 + [SKIP] * 8
    text = "a\n\nb\n\n" + "[SKIP]\n\n" * 8 + "</think>\\boxed{2}"
    out = fns["compress"](make_sample(ids, text, True, skip_id=SKIP))
    assert out == {"correctness": 2.0, "skip_ratio": 1.0, "skip_count": 0.0, "length_threshold": -1.0, "total": 2.0}
    assert fns["explore"](make_sample(ids, text, True, skip_id=SKIP)) == out


def test_entropy_guided_preset():
    cfg = _load("entropy_guided")
    assert cfg.reward.stages.compress[0].params.L == 4096
    fns = stage_rewards(cfg.reward)
    assert set(fns) == {"compress", "explore"}
    short = Sample(correct=True, answered=True, closed=True, answer_pos=100, length=120)
    late = Sample(correct=True, answered=True, closed=True, answer_pos=5000, length=5010)
    for fn in fns.values():
        for s in (short, late, Sample()):
            assert math.isfinite(fn(s)["total"])
    assert fns["compress"](late)["total"] == 0.0
    assert fns["compress"](short)["total"] == pytest.approx(math.exp(math.log(0.2) * 120 / 4096))
    wrong = Sample(correct=False, answered=True, closed=True, answer_pos=100, length=120)
    assert fns["compress"](wrong)["total"] == 0.0  # absolute advantages (an option) must not reinforce wrong answers
    assert fns["explore"](short)["total"] == pytest.approx(1.2 + math.exp(math.log(0.5) * 120 / 4096))


def test_gdpo_keeps_a_terms_size_with_and_without_the_std_division():
    """Correctness 1.0 and a 0.2 format reward, each firing on its own sample of one group: their advantages stand 5:1
    whether the group's std divides (the size divided out, put back through the weight) or not (Dr.GRPO)."""
    import numpy as np
    import torch

    from stepentropy_rl.algorithms import gdpo_advantages
    from stepentropy_rl.rewards import TermSpec, gdpo_components

    terms = [TermSpec("correctness", 1.0, {"value": 1.0}), TermSpec("format_reward", 1.0, {"value": 0.2})]
    scores = {"correctness": torch.tensor([1.0, 0.0, 0.0, 0.0]), "format_reward": torch.tensor([0.0, 0.2, 0.0, 0.0])}
    parts = gdpo_components(terms, scores)
    assert parts["format_reward"][0] == pytest.approx(0.2) and parts["format_reward"][1].tolist() == [0, 1, 0, 0]
    mask, groups = torch.ones(4, 3), np.zeros(4, dtype=int)
    for by_std in (True, False):
        adv = gdpo_advantages(parts, mask, groups, norm_by_std=by_std)[:, -1]
        lift = (adv[:2] - adv[2:].mean()).tolist()  # each firing sample over the two that earn nothing
        assert lift[0] / lift[1] == pytest.approx(5.0, rel=1e-4)


def test_pays_wrong_answers_finds_terms_that_pay_whatever_the_answer():
    from stepentropy_rl.rewards import RewardFn, TermSpec, pays_wrong_answers

    assert not pays_wrong_answers(RewardFn([TermSpec("length_clip", gate=True, params={"L": 10}),
                                            TermSpec("exp_length", params={"L": 10, "only_correct": True})]))
    assert pays_wrong_answers(RewardFn([TermSpec("exp_length", params={"L": 10, "only_correct": False})]))
    assert pays_wrong_answers(RewardFn([TermSpec("correctness"), TermSpec("format_reward")]))
    assert pays_wrong_answers(RewardFn([TermSpec("correctness"), TermSpec("skip_ratio")]))  # paper 1's tiers
    assert not pays_wrong_answers(RewardFn([TermSpec("correctness"), TermSpec("skip_count"),
                                            TermSpec("length_threshold")]))  # penalties only


def test_pays_wrong_answers_probes_many_skips_and_long_responses():
    """A skip tier set above 0.8 paid a wrong answer with many skips, past the probes' four."""
    from stepentropy_rl.rewards import RewardFn, TermSpec, pays_wrong_answers

    assert pays_wrong_answers(RewardFn([TermSpec("skip_ratio", params={"high": 0.9, "low": 0.85})]))
    assert pays_wrong_answers(RewardFn([TermSpec("length_threshold", params={"limit": 10, "penalty": 1.0})]))
