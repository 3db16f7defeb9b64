"""A rerun of a run_dir under another config: refused where a finished stage depends on the changed key."""
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from stepentropy_rl.config import ConfigError, build
from stepentropy_rl.driver.train import Stages, check_config, run_config

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def _job(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return build(compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", *overrides]))


def _config(*overrides):
    return _job(*overrides).to_dict()


def _finished(run_dir, config, names=("init", "eval_base", "prune", "sft", "eval_sft")):
    stages = Stages(run_dir, run_config(config))
    for name in names:
        stages.mark(name, {"seconds_of_work": 1})


def test_a_changed_key_that_a_finished_stage_depends_on_is_refused(tmp_path):
    """A sweep job resuming another's directory, or a rerun with another ratio: the 0.8 SFT data would be reported
    as 0.4's."""
    _finished(tmp_path, _config())
    with pytest.raises(ConfigError, match=re.escape("finished its stage 'prune' with trainer.prune.ratio=0.8, and this "
                                                    "job says trainer.prune.ratio=0.4")) as err:
        check_config(tmp_path, _config("trainer.prune.ratio=0.4"))
    assert "stages/prune.done and the markers after it" in str(err.value) and "more changed" not in str(err.value)
    with pytest.raises(ConfigError, match=r"trainer.prune.ratio=0.4 \(and 1 more changed key\)"):
        check_config(tmp_path, _config("trainer.prune.ratio=0.4", "trainer.sft.lr=0.01"))
    with pytest.raises(ConfigError, match="eval_base.*data.n_eval"):
        check_config(tmp_path, _config("data.n_eval=100"))
    with pytest.raises(ConfigError, match="'sft' with seed=0"):
        check_config(tmp_path, _config("seed=1"))


def test_the_same_config_a_later_stage_and_what_decides_nothing_pass(tmp_path):
    """Resuming after a crash; GRPO rerun under another phase mode from a copy cut back to before GRPO (the controller
    bench); logging, caches, restarts and fault injection."""
    _finished(tmp_path, _config())
    check_config(tmp_path, _config())
    check_config(tmp_path, _config("algorithm.phase.mode=fixed", "trainer.grpo.steps=10"))
    check_config(tmp_path, _config("run_dir=/elsewhere", "trainer.logger.wandb=disabled", "trainer.prune.cache=false",
                                   "trainer.grpo.crash_after_step=3", "cluster.include_dashboard=false"))
    Stages(tmp_path, run_config(_config())).mark("grpo")
    with pytest.raises(ConfigError, match="'grpo' with algorithm.phase.mode='entropy'"):
        check_config(tmp_path, _config("algorithm.phase.mode=fixed"))


def test_markers_written_before_they_held_a_config_are_not_checked(tmp_path):
    Stages(tmp_path).mark("prune")
    check_config(tmp_path, _config("trainer.prune.ratio=0.4"))


def test_a_finished_run_rerun_writes_its_report_without_starting_an_actor(tmp_path, monkeypatch):
    """A resumed sweep reruns its finished jobs: each started every engine, the reference, the reward service and
    the learners (minutes for a 7B) only to write the same report again."""
    import json

    from stepentropy_rl.driver import roles, train

    def no_actor(*a, **k):
        raise AssertionError("an actor was started for a finished run")

    for spawn in ("spawn_rollouts", "spawn_reference", "spawn_reward", "spawn_learners"):
        monkeypatch.setattr(roles, spawn, no_actor)
    monkeypatch.setattr(train, "check_same_base", lambda *a: None)
    stages = Stages(tmp_path)
    for name in train.ORDER:
        stages.mark(name)
    (tmp_path / "eval").mkdir()
    for name, acc in (("base", 0.9), ("sft", 0.95), ("final", 0.97)):
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps({"accuracy": acc, "accuracy_stderr": 0.01,
                                                                    "thinking_tokens": 10.0, "skips": 0.0, "n": 100}))
    (tmp_path / "models").mkdir()
    rep = train.run_training(_job(), tmp_path, "base", [], [], None)
    assert rep["models"]["final"]["accuracy"] == 0.97 and set(rep["stage_seconds"]) == set(train.ORDER)
    assert json.loads((tmp_path / "report.json").read_text())["models"]["sft"]["accuracy"] == 0.95
