"""User code named in a config: a verl-style reward (``reward.custom``) and a grader (``data.grader=file.py:fn``)."""
import pytest

from stepentropy_rl.rewards import make_sample, stage_rewards

SCORER = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if solution_str == "":
        raise RuntimeError("user code is not called on the config check's empty probe")
    bonus = 0.5 if extra_info.get("hard") else 0.0
    return {"score": (1.0 if ground_truth in solution_str else 0.0) + bonus, "acc": 1.0}

def half(data_source, solution_str, ground_truth, extra_info=None):
    return 0.5 if data_source == "mine" else 0.0

def grade(solution_str, ground_truth):
    return 1.0 if solution_str.strip().endswith(ground_truth) else 0.1
'''

REWARD = {"stages": {"compress": [{"name": "length_clip", "gate": True, "params": {"L": 3}},
                                  {"name": "correctness", "params": {"value": 1.0}}],
                     "explore": [{"name": "correctness", "params": {"value": 1.0}}]}}


def sample(text, answer="7", **kw):
    return make_sample([1, 2, 9, 3], text, True, skip_id=5, close_id=9, ground_truth=answer, **kw)


def test_a_custom_term_joins_every_stage_under_its_gates(scorer):
    fns = stage_rewards({**REWARD, "custom": {"path": scorer, "weight": 2.0}})
    right = sample("a b</think>\\boxed{7}", extra_info={"hard": True})
    assert fns["explore"](right) == {"correctness": 1.0, "custom": 3.0, "total": 4.0}
    assert fns["compress"](right)["total"] == 4.0  # the thinking closes within L = 3 tokens: the gate is open
    long = make_sample([1, 2, 3, 4, 9], "a b c d</think>\\boxed{7}", True, skip_id=5, close_id=9, ground_truth="7")
    assert fns["compress"](long)["custom"] == 2.0 and fns["compress"](long)["total"] == 0.0  # gated
    other = stage_rewards({**REWARD, "custom": {"path": scorer, "name": "half"}})["explore"]
    assert other(sample("x", data_source="mine"))["custom"] == 0.5 and other(sample("x"))["custom"] == 0.0


@pytest.mark.parametrize("custom,msg", [
    ({"path": "/nonexistent/r.py"}, "reward.custom: no such file"),
    ({"path": "SCORER", "name": "missing"}, "has no function 'missing'"),
    ({"path": "SCORER", "weight": float("nan")}, "weight must be a finite number"),
    ("my_reward.py", "reward.custom must be {path, name, weight}"),
    ({"path": "SCORER", "params": {}}, "reward.custom must be {path, name, weight}"),
])
def test_a_bad_custom_reward_is_named(scorer, custom, msg):
    if isinstance(custom, dict) and custom.get("path") == "SCORER":
        custom = {**custom, "path": scorer}
    with pytest.raises(ValueError, match=msg):
        stage_rewards({**REWARD, "custom": custom})


def test_a_scorer_that_does_not_import_is_named(tmp_path):
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(ValueError, match="importing .*broken.py failed .*ModuleNotFoundError"):
        stage_rewards({**REWARD, "custom": {"path": str(tmp_path / "broken.py")}})


def test_a_user_grader_by_file_and_function(scorer):
    from stepentropy_rl.tasks.grading import make_grader

    grade = make_grader(f"{scorer}:grade")
    assert grade("x</think>The answer is 7", "7") and not grade("x</think>The answer is 8", "7")
    assert not grade("no closing tag 7", "7")  # the answer span: nothing after </think>


def test_a_user_file_with_a_dataclass_and_postponed_annotations_imports(tmp_path):
    """The file ran before it was in sys.modules, and a @dataclass under `from __future__ import annotations` looks
    its module up there: 'NoneType' object has no attribute '__dict__', and the grader was refused."""
    import sys

    from stepentropy_rl.hooks import load_function

    path = tmp_path / "dc_grader.py"
    path.write_text("from __future__ import annotations\nfrom dataclasses import dataclass\n\n\n@dataclass\n"
                    "class Rule:\n    exact: bool = True\n\n\ndef grade(s, g):\n    return Rule().exact and s == g\n")
    assert load_function(str(path), "grade", "data.grader")("1", "1")
    broken = tmp_path / "broken_grader.py"
    broken.write_text("raise RuntimeError('no')\n")
    with pytest.raises(ValueError, match="importing .*broken_grader.py failed"):
        load_function(str(broken), "grade", "data.grader")
    assert not [m for m, mod in sys.modules.items() if str(broken) == getattr(mod, "__file__", None)]


def test_config_paths_become_absolute_and_bad_ones_are_config_errors(scorer, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import ConfigError, build
    from tests.integration.test_bad_input import ROOT

    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        ok = compose("config", overrides=["+experiment=entropy_guided", "run_dir=r", "reward.custom.path=my_reward.py",
                                          "data.grader=my_reward.py:grade"])
        bad = compose("config", overrides=["+experiment=entropy_guided", "run_dir=r", "data.grader=nope.py:grade"])
    job = build(ok, check_paths=False)
    assert job.reward["custom"]["path"] == scorer and job.data.grader == f"{scorer}:grade"
    with pytest.raises(ConfigError, match=r"^data.grader: no such file"):
        build(bad, check_paths=False)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        no_fn = compose("config", overrides=["+experiment=entropy_guided", "run_dir=r", "data.grader=my_reward.py"])
    with pytest.raises(ConfigError, match=r"data.grader must be one of .* or path/to/file.py:function, got "
                                          r"'my_reward.py'"):
        build(no_fn, check_paths=False)
