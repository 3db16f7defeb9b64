"""Shared fixtures: one micro reasoner for the whole session (tests never touch the user's cache)."""
import os

import pytest

MICRO_OVERRIDES = ["data=basket", "model.tiny.hidden_size=64", "model.tiny.num_layers=1", "model.tiny.num_heads=1",
                   "model.tiny.intermediate_size=128", "model.tiny.train_examples=2000", "model.tiny.steps=250",
                   "model.tiny.batch_size=16"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("stepentropy_cache")
    old = os.environ.get("STEPENTROPY_CACHE")
    os.environ["STEPENTROPY_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("STEPENTROPY_CACHE", None)
    else:
        os.environ["STEPENTROPY_CACHE"] = old


@pytest.fixture(scope="session")
def micro_model(cache_dir):
    """A 1-layer reasoner trained for 250 steps (8 s): real checkpoint format, CoTs of the task's shape that close
    </think> with a boxed answer about half the time, nearly always a wrong one."""
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.driver.run import resolve_model

    conf = os.path.join(os.path.dirname(os.path.dirname(__file__)), "conf")
    with initialize_config_dir(config_dir=conf, version_base=None):
        cfg = compose("config", overrides=["+experiment=prune_sweep", "run_dir=/tmp", *MICRO_OVERRIDES])
    return resolve_model(build(cfg))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every test that needs actors."""
    import ray

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": root, "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def r1_standin(cache_dir):
    """The R1-format stand-in (real Qwen2 BPE, R1's tokens, template and vocabulary; random weights)."""
    from stepentropy_rl.r1_standin import StandinConfig, ensure_r1_standin

    return str(ensure_r1_standin(StandinConfig()))


@pytest.fixture
def scorer(tmp_path):
    """A user's reward file (``tests.unit.test_hooks.SCORER``): verl's ``compute_score``, another scorer, a grader."""
    from tests.unit.test_hooks import SCORER

    (tmp_path / "my_reward.py").write_text(SCORER)
    return str(tmp_path / "my_reward.py")
