"""Entropy-phase controller: fixed schedule, stall/reverse switching, guards, resume."""
import json
import math
import random

import pytest

from stepentropy_rl.phase import COMPRESS, EXPLORE, STAGES, PhaseConfig, PhaseController, slope


def run(cfg, series):
    ctl = PhaseController(cfg)
    return ctl, [ctl.update(x) for x in series]


def first_switch(stages, start=COMPRESS):
    """Index of the update whose answer first differs from ``start`` (None if never)."""
    return next((i for i, s in enumerate(stages) if s != start), None)


def linear(start, rate, n):
    return [start + rate * i for i in range(n)]


def test_slope_is_least_squares():
    assert slope([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.0)
    assert slope([5.0, 5.0, 5.0]) == pytest.approx(0.0)
    assert slope([0.0, 1.0, 0.0, 1.0]) == pytest.approx(0.2)


def test_fixed_schedule_switches_exactly_at_fixed_compress_steps():
    ctl, stages = run(PhaseConfig(mode="fixed", fixed_compress_steps=10), [1.0] * 20)
    assert stages[:9] == [COMPRESS] * 9 and stages[9:] == [EXPLORE] * 11  # answer of update i = stage of step i+1
    assert [h["stage"] for h in ctl.history] == [COMPRESS] * 10 + [EXPLORE] * 10
    assert ctl.log_dict()["phase/switches"] == 1
    assert PhaseController(PhaseConfig(mode="fixed", fixed_compress_steps=0)).stage == EXPLORE


def test_fixed_schedule_follows_explicit_steps():
    ctl = PhaseController(PhaseConfig(mode="fixed", fixed_compress_steps=5))
    assert ctl.update(1.0, step=3) == COMPRESS
    assert ctl.update(1.0, step=4) == EXPLORE


@pytest.mark.parametrize("mode", [COMPRESS, EXPLORE])
def test_single_stage_modes_never_switch(mode):
    rng = random.Random(0)
    series = linear(2.0, -0.05, 20) + linear(1.0, 0.05, 20) + [rng.uniform(0, 3) for _ in range(20)]
    ctl, stages = run(PhaseConfig(mode=mode, start=EXPLORE if mode == COMPRESS else COMPRESS), series)
    assert set(stages) == {mode} and ctl.log_dict()["phase/switches"] == 0


def test_stall_descending_series_keeps_compress():
    ctl, stages = run(PhaseConfig(), linear(2.0, -0.02, 40))
    assert set(stages) == {COMPRESS}
    assert ctl.trend == pytest.approx(-0.02, rel=0.05)


def test_stall_descend_then_flatten_switches_after_min_steps_and_patience():
    cfg = PhaseConfig(ema=0.0, min_steps=4, patience=2, window=4)
    series = linear(2.0, -0.05, 10) + [1.55] * 20
    _, stages = run(cfg, series)
    # flat from index 9; the first all-flat window ends at index 12 (streak 1), patience reached at 13
    assert first_switch(stages) == 13 and stages[13:18] == [EXPLORE] * 5
    assert stages[18] == COMPRESS  # a plateau also stalls EXPLORE: min_steps + patience - 1 steps later, back
    # longer patience delays the switch by exactly the extra steps
    _, stages = run(PhaseConfig(ema=0.0, min_steps=4, patience=4, window=4), series)
    assert first_switch(stages) == 15


def test_stall_noise_below_hysteresis_does_not_switch():
    rng = random.Random(1)
    series = [2.0 - 0.01 * i + rng.uniform(-5e-4, 5e-4) for i in range(60)]
    _, stages = run(PhaseConfig(hysteresis=0.002), series)
    assert set(stages) == {COMPRESS}


def test_stall_slow_descent_below_hysteresis_counts_as_stall():
    _, stages = run(PhaseConfig(ema=0.0, hysteresis=0.01), linear(2.0, -0.005, 20))
    assert first_switch(stages) == 4  # trend at 4th point, streak 2 at the 5th


def test_explore_rising_stays_falling_or_stalling_switches_back():
    cfg = PhaseConfig(start=EXPLORE, ema=0.0)
    _, stages = run(cfg, linear(1.0, 0.02, 40))
    assert set(stages) == {EXPLORE}
    _, stages = run(cfg, linear(1.0, 0.02, 8) + [1.14] * 12)
    assert first_switch(stages, EXPLORE) == 11 and stages[11] == COMPRESS
    _, stages = run(cfg, linear(1.0, 0.02, 8) + linear(1.14, -0.02, 12))
    assert first_switch(stages, EXPLORE) is not None and stages[first_switch(stages, EXPLORE)] == COMPRESS


def test_full_cycle_compress_explore_compress():
    cfg = PhaseConfig(ema=0.5)
    series = linear(2.0, -0.05, 15) + [1.3] * 5 + linear(1.3, 0.03, 15) + [1.72] * 10
    ctl, stages = run(cfg, series)
    used = [h["stage"] for h in ctl.history]
    changes = [i for i in range(1, len(used)) if used[i] != used[i - 1]]
    assert [used[i] for i in changes] == [EXPLORE, COMPRESS, EXPLORE]  # the last: the final plateau stalls compress
    assert changes[:2] == [19, 39]  # the window reads flat from steps 17 and 37; two such steps end the stage


def test_a_stage_moving_at_twice_the_hysteresis_is_not_judged_stalled():
    """The trend is fitted to the raw entropies. An EMA of 0.8 before the fit, restarted at the phase's first value,
    showed the first decisions 35-48% of a linear slope: a compress stage falling at 0.004 nats/step, twice the
    hysteresis, was judged stalled after 5 steps; one falling at half the hysteresis stalls."""
    cfg = PhaseConfig()  # ema 0.8, window 4, hysteresis 0.002, min_steps 4, patience 2
    ctl, stages = run(cfg, linear(0.1, -0.004, 20))
    assert set(stages) == {COMPRESS} and ctl.trend == pytest.approx(-0.004)
    _, stages = run(cfg, linear(0.1, -0.001, 20))
    assert first_switch(stages) == 4  # the earliest: min_steps 4 and two opposing trends (window 4: from the 4th)
    _, stages = run(PhaseConfig(start=EXPLORE), linear(0.1, 0.004, 20))
    assert set(stages) == {EXPLORE}


def test_reverse_rule_ignores_plateau_switches_on_reversal():
    cfg = PhaseConfig(ema=0.0, switch_on="reverse")
    _, stages = run(cfg, linear(2.0, -0.05, 10) + [1.55] * 30)
    assert set(stages) == {COMPRESS}  # a plateau is not a reversal
    _, stages = run(cfg, linear(2.0, -0.05, 10) + linear(1.55, 0.01, 20))
    # rising from index 9; first all-rising window ends at 12, patience 2 -> 13
    assert first_switch(stages) == 13
    _, stages = run(cfg, linear(2.0, -0.05, 10) + linear(1.55, 0.001, 20))  # rise below hysteresis
    assert set(stages) == {COMPRESS}
    _, stages = run(PhaseConfig(ema=0.0, switch_on="reverse", start=EXPLORE), linear(1.0, 0.02, 6) + [1.1] * 20)
    assert set(stages) == {EXPLORE}
    _, stages = run(PhaseConfig(ema=0.0, switch_on="reverse", start=EXPLORE), linear(1.0, -0.02, 20))
    assert first_switch(stages, EXPLORE) == 4


def test_reverse_flat_noise_does_not_switch():
    rng = random.Random(2)
    _, stages = run(PhaseConfig(switch_on="reverse"), [1.5 + rng.uniform(-1e-3, 1e-3) for _ in range(80)])
    assert set(stages) == {COMPRESS}


def test_min_steps_respected():
    flat = [1.0] * 30
    for min_steps in (1, 4, 7, 12):
        ctl, stages = run(PhaseConfig(ema=0.0, min_steps=min_steps, patience=1, window=2), flat)
        i = first_switch(stages)
        assert i == max(min_steps, 2) - 1  # update index i completes the (i+1)-th step of the phase
        runs, n = [], 1
        used = [h["stage"] for h in ctl.history]
        for a, b in zip(used, used[1:]):
            if a == b:
                n += 1
            else:
                runs.append(n)
                n = 1
        assert runs and min(runs) >= min_steps


def test_trend_none_until_window_and_reset_at_switch():
    ctl = PhaseController(PhaseConfig(ema=0.0, window=3, min_steps=3, patience=1))
    ctl.update(1.0)
    ctl.update(1.0)
    assert ctl.trend is None and math.isnan(ctl.log_dict()["phase/trend"])
    assert ctl.update(1.0) == EXPLORE  # flat -> stall after 3 steps
    assert ctl.trend is None and ctl.steps_in_phase == 0


def test_a_level_that_jumps_with_the_stage_temperature_is_not_a_trend():
    """A policy that never changes, measured lower at the compress temperature than at the explore one: the stages
    must alternate as on a single flat level (every max(min_steps, window + patience - 1) = 5 steps); an EMA carried
    across a switch read its catching up as a rise and kept explore 16 steps."""
    def schedule(level):
        ctl = PhaseController(PhaseConfig(mode="entropy"))
        for step in range(40):
            ctl.update(level[ctl.stage], step)
        return "".join(h["stage"][0] for h in ctl.history)

    jumping = schedule({COMPRESS: 0.30, EXPLORE: 0.45})
    assert jumping == schedule({COMPRESS: 0.30, EXPLORE: 0.30}) == ("c" * 5 + "e" * 5) * 4
    ctl = PhaseController(PhaseConfig(ema=0.8, window=2, min_steps=2, patience=1))
    ctl.update(1.0), ctl.update(1.0)
    assert ctl.stage == EXPLORE and ctl.entropy_ema is None  # restarts at the next stage's first value
    ctl.update(2.0)
    assert ctl.entropy_ema == 2.0


def test_log_dict_keys_and_values():
    ctl = PhaseController(PhaseConfig(ema=0.5))
    assert math.isnan(ctl.log_dict()["phase/entropy_ema"])
    ctl.update(2.0)
    ctl.update(1.0)
    d = ctl.log_dict()
    assert set(d) == {"phase/stage", "phase/entropy_ema", "phase/trend", "phase/steps_in_phase", "phase/switches"}
    assert d["phase/stage"] == 0 and d["phase/entropy_ema"] == pytest.approx(1.5) and d["phase/steps_in_phase"] == 2
    assert PhaseController(PhaseConfig(mode=EXPLORE)).log_dict()["phase/stage"] == 1


@pytest.mark.parametrize("cfg", [PhaseConfig(), PhaseConfig(mode="fixed", fixed_compress_steps=13),
                                 PhaseConfig(switch_on="reverse", ema=0.3)])
def test_state_dict_round_trip_continues_identically(cfg):
    rng = random.Random(3)
    series = linear(2.0, -0.05, 12) + [1.45 + rng.uniform(-0.01, 0.01) for _ in range(4)] + linear(1.45, 0.04, 4)
    a = PhaseController(cfg)
    for x in series[:10]:
        a.update(x)
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
    b = PhaseController(cfg)
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    out_a, out_b = [], []
    for x in series[10:]:
        out_a.append((a.update(x), a.log_dict(), a.trend, a.steps_in_phase))
        out_b.append((b.update(x), b.log_dict(), b.trend, b.steps_in_phase))
    assert out_a == out_b
    assert a.state_dict() == b.state_dict()


def test_state_dict_is_plain_json():
    ctl = PhaseController()
    assert json.loads(json.dumps(ctl.state_dict(), allow_nan=False)) == ctl.state_dict()  # fresh: ema None
    for x in linear(2.0, -0.03, 7):
        ctl.update(x)
    state = ctl.state_dict()
    assert json.loads(json.dumps(state, allow_nan=False)) == state

    def plain(v):
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return v is None or type(v) in (bool, int, float, str)
    assert plain(state)


def test_load_state_dict_rejects_bad_state():
    ctl = PhaseController()
    with pytest.raises(ValueError, match="missing"):
        ctl.load_state_dict({"stage": COMPRESS})
    state = ctl.state_dict()
    state["stage"] = "sleep"
    with pytest.raises(ValueError, match="stage"):
        ctl.load_state_dict(state)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "abc", None])
def test_non_finite_entropy_raises_and_leaves_state_alone(bad):
    ctl = PhaseController()
    for x in linear(2.0, -0.03, 5):
        ctl.update(x)
    before = ctl.state_dict()
    with pytest.raises(ValueError, match="entropy"):
        ctl.update(bad)
    assert ctl.state_dict() == before


@pytest.mark.parametrize("key,value", [("mode", "sometimes"), ("start", "middle"), ("ema", 1.0), ("ema", -0.1),
                                       ("window", 1), ("window", 2.5), ("hysteresis", -1e-3),
                                       ("hysteresis", math.inf), ("min_steps", 0), ("patience", 0),
                                       ("fixed_compress_steps", -1), ("switch_on", "always")])
def test_validate_names_the_key(key, value):
    with pytest.raises(ValueError, match=rf"^{key} must"):
        PhaseConfig(**{key: value})  # checked on construction (__post_init__)
    cfg = PhaseConfig()
    setattr(cfg, key, value)
    with pytest.raises(ValueError, match=rf"^{key} must"):
        PhaseController(cfg)


def test_validate_message_for_ema():
    with pytest.raises(ValueError, match=r"ema must be in \[0, 1\)"):
        PhaseConfig(ema=1.5)
    PhaseConfig().validate()


def test_the_step_log_of_a_switch_holds_what_decided_it():
    """A switch restarts the EMA and the trend; logged after it, the switch step showed an empty EMA and trend and a
    phase of 0 steps under the old stage (8 of the 40 rows of a default run)."""
    ctl = PhaseController(PhaseConfig(min_steps=4, window=4, patience=2, ema=0.0, hysteresis=0.0))
    for i, h in enumerate([1.0] * 6):  # flat: compress stalls once window and patience allow
        ctl.update(h, i)
        if ctl.switches:
            break
    log = ctl.step_log()
    assert log["phase/stage"] == STAGES.index(COMPRESS) and log["phase/next_stage"] == STAGES.index(EXPLORE)
    assert log["phase/entropy_ema"] == 1.0 and log["phase/trend"] == 0.0 and log["phase/steps_in_phase"] >= 4
    assert log["phase/switches"] == 1 and math.isnan(ctl.log_dict()["phase/trend"])  # the new phase: nothing yet
    assert PhaseController().step_log() == {}


def test_a_state_saved_when_the_window_held_ema_values_starts_its_window_afresh():
    ctl = PhaseController(PhaseConfig())
    for x in (0.1, 0.09, 0.08, 0.07):
        ctl.update(x)
    state = ctl.state_dict()
    again = PhaseController(PhaseConfig())
    again.load_state_dict(state)
    assert again.trend == pytest.approx(-0.01)
    del state["recent_of"]  # as saved before 2026-12-05
    old = PhaseController(PhaseConfig())
    old.load_state_dict(state)
    assert old.trend is None and old.stage == ctl.stage


@pytest.mark.parametrize("min_steps,window,patience", [(4, 4, 2), (1, 2, 1), (8, 3, 2), (2, 5, 3)])
def test_stages_reached_is_the_earliest_switch_the_controller_can_make(min_steps, window, patience):
    """A flat entropy stalls every trend: the controller switches as early as it can. A run one step shorter than
    that never trains in the other stage (r1_standin's 2 steps in entropy mode were compress only)."""
    from stepentropy_rl.phase import stages_reached

    cfg = PhaseConfig(mode="entropy", min_steps=min_steps, window=window, patience=patience)
    _, stages = run(cfg, [1.0] * 20)
    trained = [COMPRESS] + stages  # the stage each step trains in: the start, then each update's answer
    earliest = trained.index(EXPLORE)
    assert stages_reached(cfg, earliest + 1) == [COMPRESS, EXPLORE]
    assert stages_reached(cfg, earliest) == [COMPRESS]
    fixed = PhaseConfig(mode="fixed", fixed_compress_steps=3)
    assert stages_reached(fixed, 3) == [COMPRESS] and stages_reached(fixed, 4) == [COMPRESS, EXPLORE]
    assert stages_reached(PhaseConfig(mode="fixed", fixed_compress_steps=0), 4) == [EXPLORE]
