"""A rerun of a run_dir under another config: refused where a finished stage depends on the changed key."""
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from stepentropy_rl.config import ConfigError, build
from stepentropy_rl.driver.train import Stages, check_config, run_config

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def _config(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return build(compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", *overrides])).to_dict()


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
    assert "stages/prune.done and the markers after it" in str(err.value)
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
