"""scripts/controller_noise.py: the noise a run's entropy carries about its phases' trends, and the default
controller fed that noise with no trend."""
import importlib.util
import random
from pathlib import Path

import pytest

from stepentropy_rl.phase import PhaseConfig

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "controller_noise.py"
spec = importlib.util.spec_from_file_location("controller_noise", SCRIPT)
noise = importlib.util.module_from_spec(spec)
spec.loader.exec_module(noise)


def test_the_noise_is_measured_about_each_phases_own_line():
    """Two phases with opposite trends and a jump between them: the trends and the jump are not noise."""
    rng = random.Random(1)
    entropy = [0.2 - 0.01 * i + rng.gauss(0, 0.003) for i in range(200)]
    entropy += [0.5 + 0.02 * i + rng.gauss(0, 0.003) for i in range(200)]
    lengths, sd = noise.phase_noise(entropy, [0] * 200 + [1] * 200)
    assert lengths == [200, 200] and sd == pytest.approx(0.003, rel=0.1)


def test_each_phases_trend_comes_with_its_standard_error():
    """A descending phase and a flat one: the slope is found within its error, the flat one's error is the noise's
    over the phase, sd / sqrt(sum (i - mean)^2), and a 2-step phase has no line."""
    rng = random.Random(2)
    entropy = [0.2 - 0.001 * i + rng.gauss(0, 0.005) for i in range(40)] + [0.3, 0.31]
    entropy += [0.15 + rng.gauss(0, 0.005) for _ in range(40)]
    trends = noise.phase_trends(entropy, [0] * 40 + [1] * 2 + [0] * 40)
    assert [(t["stage"], t["start"], t["steps"]) for t in trends] == [(0, 0, 40), (0, 42, 40)]
    down, flat = trends
    assert abs(down["slope"] + 0.001) < 3 * down["stderr"] and down["slope"] < -3 * down["stderr"]
    assert flat["stderr"] == pytest.approx(0.005 / (40 * (40 ** 2 - 1) / 12) ** 0.5, rel=0.3)
    assert abs(flat["slope"]) < 3 * flat["stderr"]


def test_without_noise_a_flat_entropy_passes_no_hysteresis_and_with_it_the_phases_vary():
    cfg = PhaseConfig()
    flat = noise.simulate(0.0, cfg, runs=5, steps=40)
    assert flat["beyond"] == 0 and flat["longer"] == 0 and flat["phases"] == 5 * 7  # a 5-step alternation
    noisy = noise.simulate(0.005, cfg, runs=50, steps=40)
    assert 0.2 < noisy["beyond"] / noisy["decisions"] < 0.6 and noisy["longer"] > 0


def test_phase_keys_on_the_command_line_take_numbers_and_words():
    assert [noise._value(v) for v in ("8", "0.004", "true", "explore")] == [8, 0.004, True, "explore"]


def test_the_controller_fed_noise_is_the_runs_own(tmp_path, capsys):
    """The controller's settings came from the command line alone: a run made with hysteresis 0.001 was judged, and
    its noise simulated, with the default 0.002."""
    import json

    rows = [{"step": i, "phase/stage": 0, "policy/entropy": 0.1 + 0.001 * (i % 3), "phase/trend": float("nan")}
            for i in range(8)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.yaml").write_text("algorithm:\n  phase: {mode: compress, hysteresis: 0.001, window: 4}\n")
    noise.main([str(tmp_path / "metrics.jsonl"), "--runs", "2", "--steps", "8"])
    assert "(hysteresis 0.001)" in capsys.readouterr().out
    noise.main([str(tmp_path / "metrics.jsonl"), "hysteresis=0.003", "--runs", "2", "--steps", "8"])
    assert "(hysteresis 0.003)" in capsys.readouterr().out  # the command line still wins


def test_a_trend_past_the_hysteresis_the_other_way_does_not_count_as_keeping_the_phase():
    """"Beyond the hysteresis" counted a trend that passed it either way; under the stall rule one the other way (the
    entropy rising while compressing) is a reason to switch, not to go on."""
    cfg = PhaseConfig(hysteresis=0.002)
    history = [{"stage": "compress", "trend": -0.003}, {"stage": "compress", "trend": 0.003},
               {"stage": "explore", "trend": 0.003}, {"stage": "explore", "trend": -0.003},
               {"stage": "compress", "trend": 0.001}, {"stage": "compress", "trend": None}]
    got = noise.run_figures(history, [5, 5], cfg)
    assert (got["beyond"], got["kept"], got["decisions"]) == (4, 2, 5)
    flat = noise.simulate(0.004, cfg, runs=40, steps=40)
    assert 0 < flat["kept"] < flat["beyond"]  # noise passes it both ways
