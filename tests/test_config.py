import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from stepentropy_rl.config import ConfigError, validate

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("config", overrides=["+experiment=prune_sweep", "run_dir=/tmp/x", *overrides])


def test_default_sweep_validates():
    c = cfg()
    validate(c)
    assert list(c.pruning.strategy) == ["low", "high", "random"] and c.pipeline == "prune_study"


@pytest.mark.parametrize("override,key", [
    ("pruning.ratio=1.5", "pruning.ratio"),
    ("pruning.ratio=-0.1", "pruning.ratio"),
    ("pruning.strategy=medium", "pruning.strategy"),
    ("model.path=/no/such/model", "model.path"),
    ("data.path=/no/such.jsonl", "data.path"),
    ("pruning.aggregate=max", "pruning.aggregate"),
    ("rollout.top_p=0", "rollout.top_p"),
    ("data.task.redundancy=2", "redundancy"),
    ("data.grader=fuzzy", "data.grader"),
])
def test_impossible_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        validate(cfg(override))


def test_cli_reports_config_error_before_starting_anything(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stepentropy_rl.main", "+experiment=prune_sweep",
                          "pruning.ratio=[0.2,1.5]", f"run_dir={tmp_path}"], capture_output=True, text=True,
                         cwd=Path(CONF).parent, timeout=120)
    assert out.returncode != 0
    assert "config error: pruning.ratio must be in [0, 1], got 1.5" in out.stderr


def test_real_scale_configs_compose():
    c = cfg("model=r1_distill_qwen_7b", "rollout=vllm_gpu")
    assert c.rollout.engine.dtype == "bfloat16" and c.model.path.endswith("Qwen-7B")
