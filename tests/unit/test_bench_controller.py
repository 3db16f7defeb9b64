"""scripts/bench_controller.py's bookkeeping: runs reused only under the overrides they ran with, the seeds asked
for summarised, and differences with their error over seeds (no GRPO job runs here)."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_controller.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_controller", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ran = []

    def run_mode(run_dir, mode, seed, overrides):
        ran.append((seed, mode, tuple(overrides)))
        acc = {"entropy": 0.98, "fixed": 0.76 if seed == 0 else 0.98, "compress": 0.98, "explore": 0.97}[mode]
        return {"base": {"accuracy": 0.96, "thinking_tokens": 228.0},
                "final": {"accuracy": acc, "thinking_tokens": 51.0}, "restarts": 0}

    monkeypatch.setattr(module, "run_mode", run_mode)
    monkeypatch.setattr(module, "fork_after_sft", lambda src, dst: None)
    module.ran = ran
    return module


def test_a_rerun_under_other_overrides_is_refused_not_reported_as_its_own(bench, tmp_path, capsys):
    """A rerun with trainer.grpo.optimizer=fresh over a results.json of the default ran nothing and printed the old
    table as the new setting's."""
    out = tmp_path / "bc"
    bench.main(["--seeds", "0", "1", "--out", str(out)])
    assert len(bench.ran) == 8 and json.loads((out / "results.json").read_text())["_overrides"] == []
    with pytest.raises(SystemExit, match=r"made with the overrides \[\], not \['trainer.grpo.optimizer=fresh'\]"):
        bench.main(["--seeds", "0", "--out", str(out), "trainer.grpo.optimizer=fresh"])
    bench.main(["--seeds", "0", "1", "--out", str(out)])  # the same overrides go on with the runs made
    assert len(bench.ran) == 8


def test_runs_on_another_base_are_refused_not_reported_as_the_new_defaults(bench, tmp_path, monkeypatch):
    """A default that moves the base (the recipe's init_std, the task's recap openers) leaves the overrides as they
    were: a rerun over the old default's results.json would have reported the old base's runs as the new one's."""
    out = tmp_path / "bc"
    bench.main(["--seeds", "0", "--out", str(out)])
    assert json.loads((out / "results.json").read_text())["_base"] == bench.base_of([]).split("/")[-1]
    assert bench.base_of([]).startswith("tiny-") and bench.base_of(["model.tiny.seed=1"]) != bench.base_of([])
    monkeypatch.setattr(bench, "base_of", lambda overrides: "tiny-000000000000")
    with pytest.raises(SystemExit, match=r"made on the base tiny-\w+, and these overrides now resolve to "
                                         r"tiny-000000000000"):
        bench.main(["--seeds", "0", "--out", str(out)])
    assert len(bench.ran) == 4


def test_kept_runs_made_under_another_default_are_refused(bench, tmp_path):
    """The compress stage's advantages went from absolute to group-relative as a default: the overrides and the base
    stayed the same, so a rerun over the old results.json kept the old runs and reported them as the new default's.
    A kept run's stage markers record its config; one that differs from what its job composes now is refused."""
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.driver.train import run_config, stage_inputs

    out = tmp_path / "bc"
    bench.main(["--seeds", "0", "--out", str(out)])
    with initialize_config_dir(config_dir=str(SCRIPT.parents[1] / "conf"), version_base=None):
        for mode in bench.MODES:
            run_dir = out / f"seed0_{mode}"
            config = run_config(stage_inputs(build(compose("config", overrides=bench.job_overrides(
                run_dir, mode, 0, [])), check_paths=False)))
            (run_dir / "stages").mkdir(parents=True)
            (run_dir / "stages" / "eval_final.done").write_text(json.dumps({"config": config, "seconds": 1.0}))
    bench.main(["--seeds", "0", "--out", str(out)])  # the same config goes on with the runs made
    assert len(bench.ran) == 4
    for stage in ("grpo", "eval_final"):  # both markers record the old default: one key, named once
        marker = out / "seed0_fixed" / "stages" / f"{stage}.done"
        info = json.loads((out / "seed0_fixed" / "stages" / "eval_final.done").read_text())
        info["config"]["algorithm.adv_estimator.compress"] = "absolute"
        marker.write_text(json.dumps(info))
    with pytest.raises(SystemExit, match=r"seed0_fixed finished its stage 'grpo' with "
                                         r"algorithm.adv_estimator.compress='absolute', and its job now composes "
                                         r"algorithm.adv_estimator.compress='grpo' \(a default changed since; 1 key"):
        bench.main(["--seeds", "0", "--out", str(out)])
    assert len(bench.ran) == 4


def test_the_table_covers_the_seeds_asked_for_and_errors_are_over_seeds(bench, tmp_path):
    out = tmp_path / "bc"
    bench.main(["--seeds", "0", "1", "2", "--out", str(out)])
    bench.main(["--seeds", "1", "--out", str(out)])  # one seed: its spread is unknown, not 0
    table = (out / "table.md").read_text()
    assert "| fixed | 1 | 98.0 ± n/a% |" in table and "| entropy - fixed | +0.0 | +0.0 ± n/a (one seed) | n/a | 1 |" in table
    bench.main(["--seeds", "0", "1", "2", "--out", str(out)])
    table = (out / "table.md").read_text()
    # seed 0's fixed run collapsed: +22 points there, 0 on the others; the error over seeds is 7.3, not the 0.7 of
    # 1500 problem pairs pooled as if independent
    assert "| entropy - fixed | +22.0 / +0.0 / +0.0 | +7.3 ± 7.3 | +1.0 (2), p = 0.42 | 3 |" in table


def test_the_error_over_seeds_is_never_below_the_evaluations_own(bench, tmp_path, monkeypatch):
    """The controller one point above explore-only on every seed: the sd over seeds is 0, which read alone makes the
    difference infinitely sure; each seed's evaluation (100 problems, the two runs apart on one) gives it a paired error
    of 1.0 point, so over 3 seeds 0.6 and t = 1.7 with 2 degrees of freedom."""
    def run_mode(run_dir, mode, seed, overrides):
        wrong = {"entropy": 2, "fixed": 2, "compress": 2, "explore": 3}[mode]
        (run_dir / "eval").mkdir(parents=True)
        (run_dir / "eval" / "final.cots.jsonl").write_text(
            "".join(json.dumps({"id": f"t{i}", "correct": i >= wrong}) + "\n" for i in range(100)))
        return {"base": {"accuracy": 0.96, "thinking_tokens": 228.0},
                "final": {"accuracy": 1 - wrong / 100, "thinking_tokens": 51.0}, "restarts": 0}

    monkeypatch.setattr(bench, "run_mode", run_mode)
    out = tmp_path / "bc"
    bench.main(["--seeds", "0", "1", "2", "--out", str(out)])
    table = (out / "table.md").read_text()
    assert "| entropy - explore | +1.0 / +1.0 / +1.0 | +1.0 ± 0.6 | +1.7 (2), p = 0.23 | 3 |" in table
    assert "| entropy - fixed | +0.0 / +0.0 / +0.0 | +0.0 ± 0.0 | +0.0 (2), p = 1.00 | 3 |" in table


def test_the_bench_refuses_overrides_of_the_keys_it_sets_for_each_run(bench, tmp_path):
    """seed=7 came after the bench's own seed=S and won: the three "seeds" were one config, their sd about 0."""
    for own in ("seed=7", "rollout.seed=7", "+algorithm.phase.mode=fixed", "run_dir=/tmp/x"):
        with pytest.raises(SystemExit, match="the bench sets run_dir, algorithm.phase.mode, seed, rollout.seed"):
            bench.main(["--seeds", "0", "--out", str(tmp_path / "bc"), own])
    assert bench.ran == []


def test_against_another_base_is_refused(bench, tmp_path):
    """--against paired this bench's runs with another bench's by seed although a default had moved that bench's base
    since: the change of default read as the effect of the overrides compared."""
    other = tmp_path / "old"
    bench.main(["--seeds", "0", "--out", str(other)])
    data = json.loads((other / "results.json").read_text())
    (other / "results.json").write_text(json.dumps({**data, "_base": "tiny-0123456789ab"}))
    with pytest.raises(SystemExit, match=r"ran on the base tiny-0123456789ab, and its overrides now resolve to tiny-"):
        bench.main(["--seeds", "0", "--out", str(tmp_path / "new"), "--against", str(other / "results.json")])
    (other / "results.json").write_text(json.dumps(data))  # its own base: a bench of another base is compared
    bench.main(["--seeds", "0", "--out", str(tmp_path / "steps"), "--against", str(other / "results.json"),
                "model.tiny.steps=500"])


def test_one_nonzero_difference_on_every_seed_without_an_evaluation_error_is_not_certain(bench):
    """+0.2 points on each of three seeds, the runs' folders gone (no evaluation error to floor the spread): t was
    infinite and p = 0.00."""
    r = {s: {"x": {"final": {"accuracy": x}}, "y": {"final": {"accuracy": y}}}
         for s, x, y in (("0", 0.994, 0.992), ("1", 0.982, 0.980), ("2", 0.986, 0.984))}
    d = bench.seed_difference(r, r, "x", "y")
    assert d["stderr"] is None and d["p"] is None
    r = {s: {"x": {"final": {"accuracy": x / 500}}, "y": {"final": {"accuracy": (x - 1) / 500}}}
         for s, x in (("0", 398), ("1", 494), ("2", 407))}  # equal differences but for float rounding: var 1e-33
    assert bench.seed_difference(r, r, "x", "y")["p"] is None
    assert "n/a (the same on every seed, no evaluation error) | n/a |" in bench.difference_lines([("x - y", d)])[-1]


def test_a_forked_mode_keeps_nothing_the_entropy_run_wrote_after_sft(tmp_path):
    """Each mode resumes from a copy of the entropy run cut back to before GRPO: the entropy model's final CoTs and
    its TensorBoard events were kept, so the viewer showed them as the mode's and its curves mixed two runs."""
    spec = importlib.util.spec_from_file_location("bench_controller_fork", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src, dst = tmp_path / "seed0_entropy", tmp_path / "seed0_fixed"
    after = ["grpo/step_39/x", "models/final/model.safetensors", "eval/final.json", "eval/final.cots.jsonl",
             "stages/grpo.done", "stages/eval_final.done", "metrics.jsonl", "tensorboard/events.out",
             "tensorboard.stale", "report.json", "report.md"]
    before = ["models/sft/model.safetensors", "eval/sft.json", "eval/sft.cots.jsonl", "stages/sft.done",
              "prune/rows.jsonl"]
    for rel in after + before:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    module.fork_after_sft(src, dst)
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == sorted(before)
    assert all((src / rel).exists() for rel in after)
