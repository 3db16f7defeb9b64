"""A rerun of a run_dir under another config: refused where a finished stage depends on the changed key."""
import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from stepentropy_rl.config import ConfigError, build
from stepentropy_rl.driver.train import Stages, check_config, check_same_tiny, run_config, stage_inputs

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def _job(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return build(compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", *overrides]))


def _config(*overrides):
    return stage_inputs(_job(*overrides))


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
    assert "Rerun with trainer.prune.ratio=0.8 to resume it" in str(err.value)
    with pytest.raises(ConfigError, match=r"trainer.prune.ratio=0.4 \(and 1 more changed key\).*Rerun with "
                                          r"trainer.prune.ratio=0.8 \(and the others as they were\) to resume"):
        check_config(tmp_path, _config("trainer.prune.ratio=0.4", "trainer.sft.lr=0.01"))
    with pytest.raises(ConfigError, match="eval_base.*data.n_eval"):
        check_config(tmp_path, _config("data.n_eval=100"))
    with pytest.raises(ConfigError, match="eval_base.*data.grade_timeout_s"):  # math-verify's budget decides grades
        check_config(tmp_path, _config("data.grade_timeout_s=0.5"))
    with pytest.raises(ConfigError, match="'sft' with seed=0"):
        check_config(tmp_path, _config("seed=1"))


def test_a_marker_deleted_alone_refuses_the_rerun_until_the_later_ones_go_too(tmp_path):
    """Only sft.done deleted: SFT was trained anew while eval_sft, grpo and eval_final were skipped, and the report
    showed the old model's evaluations beside the new SFT model."""
    _finished(tmp_path, _config(), names=("init", "eval_base", "prune", "sft", "eval_sft", "grpo", "eval_final"))
    _grpo_checkpoint(tmp_path, _config(), step=40)
    (tmp_path / "stages" / "sft.done").unlink()
    with pytest.raises(ConfigError, match=re.escape("stages/sft.done is gone but eval_sft.done, grpo.done, "
                                                    "eval_final.done remain")) as err:
        check_config(tmp_path, _config())
    assert f"move {tmp_path / 'grpo'} aside" in str(err.value)
    for name in ("eval_sft", "grpo", "eval_final"):
        (tmp_path / "stages" / f"{name}.done").unlink()
    (tmp_path / "grpo").rename(tmp_path / "grpo.old")
    check_config(tmp_path, _config())  # deleted in order, as the refusals say: the stages after it are redone


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


def test_the_tiny_recipe_is_compared_resolved(tmp_path):
    """Markers record the recipe that trained the base: spelling its values out resumes, another value is refused
    before the bootstrap, and a recipe default that changed since (1100 -> 800 -> 500 steps) is refused by its key."""
    _finished(tmp_path, _config())
    assert _config()["model"]["tiny"]["steps"] == 500 and _job().model.tiny.steps is None
    check_config(tmp_path, _config("model.tiny.steps=500", "model.tiny.warmup_steps=100", "model.tiny.reread_weight=8"))
    with pytest.raises(ConfigError, match="'init' with model.tiny.steps=500, and this job says model.tiny.steps=700"):
        check_config(tmp_path, _config("model.tiny.steps=700"))
    old = _config("model.tiny.steps=1100", "model.tiny.warmup_steps=30")  # the verbose default until 2026-12-05
    old_dir = tmp_path / "old"
    _finished(old_dir, old)
    with pytest.raises(ConfigError, match="model.tiny.steps=1100, and this job says model.tiny.steps=500"):
        check_config(old_dir, _config())


def test_markers_from_before_the_recipe_was_resolved_resume(tmp_path):
    """A marker written before markers resolved the recipe holds None for "the recipe of that day": a terse run of
    then (warmup 30 spelled out, the rest None) resumes; its base's fingerprint still guards the model."""
    then = _job("data=basket").to_dict()
    assert then["model"]["tiny"]["steps"] is None and then["model"]["tiny"]["warmup_steps"] is None
    then["model"]["tiny"]["warmup_steps"] = 30  # conf/model/tiny.yaml said 30 until 2026-12-05
    _finished(tmp_path, then)
    check_config(tmp_path, _config("data=basket"))
    with pytest.raises(ConfigError, match="model.tiny.warmup_steps=30, and this job says model.tiny.warmup_steps=10"):
        check_config(tmp_path, _config("data=basket", "model.tiny.warmup_steps=10"))


def test_a_run_begun_from_another_tiny_reasoner_is_refused_before_the_bootstrap(tmp_path):
    """A run of the 1100-step default (its markers holding the recipe as None) rerun after the default became the
    800-step recipe: the key of the model the config trains is not the run's base's."""
    from stepentropy_rl.tiny_config import tiny_model_path

    Stages(tmp_path).mark("init", {"base": "/cache/tiny-fa82b7ae9784"})
    with pytest.raises(ConfigError, match=r"started from the tiny reasoner tiny-fa82b7ae9784, and this job's config "
                                          r"trains tiny-\w{12} .*/cache/tiny-fa82b7ae9784/bootstrap.json"):
        check_same_tiny(tmp_path, _job())
    job = _job()
    now = tiny_model_path(__import__("dataclasses").replace(job.model.tiny, task=job.data.task))
    Stages(tmp_path).mark("init", {"base": f"/moved/cache/{now.name}"})
    check_same_tiny(tmp_path, job)  # the same model, from a cache that moved since
    check_same_tiny(tmp_path, _job("model=r1_standin"))  # not a tiny reasoner: check_same_base's fingerprint guards it


def test_markers_written_before_they_held_a_config_are_not_checked(tmp_path):
    for name in ("init", "eval_base", "prune"):
        Stages(tmp_path).mark(name)
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


def test_a_job_without_room_for_all_its_actors_starts_none_and_gives_back_what_it_reserved(tmp_path, monkeypatch):
    """Every actor's resources are reserved before any actor starts: the learners' placement group used to be asked
    for after the engines, the reference and the reward service had started (minutes of engine start, then a wait
    for GPUs held by the job's own engines or by another run). A spawn that fails gives the reservation back."""
    from types import SimpleNamespace

    from stepentropy_rl.driver import placement, roles, train
    from stepentropy_rl.driver.remote import ActorLost

    started = []  # (spawn, whether it was given the job's reservation)
    for spawn in ("spawn_rollouts", "spawn_reference", "spawn_reward", "spawn_learners"):
        monkeypatch.setattr(roles, spawn, lambda *a, _name=spawn, **k: started.append((_name, reserved in a)))
    monkeypatch.setattr(train, "check_same_base", lambda *a: None)
    tok = SimpleNamespace(convert_tokens_to_ids=lambda token: 0, pad_token_id=0)
    monkeypatch.setattr(train, "load_tokenizer", lambda path: tok)
    Stages(tmp_path).mark("init")
    reserved = placement.Placement(None)
    (tmp_path / "models").mkdir()

    def no_room(cfg, train):
        raise ActorLost("no room")

    monkeypatch.setattr(placement, "reserve_job", no_room)
    with pytest.raises(ActorLost, match="no room"):
        train.run_training(_job(), tmp_path, "base", [], [], None)
    assert started == []

    released = []
    monkeypatch.setattr(reserved, "release", lambda: released.append(True))
    monkeypatch.setattr(placement, "reserve_job", lambda cfg, train: reserved)

    def dead(*a, **k):
        started.append(("spawn_learners", reserved in a))
        raise RuntimeError("a learner rank failed to start")

    monkeypatch.setattr(roles, "spawn_learners", dead)
    with pytest.raises(RuntimeError, match="failed to start"):
        train.run_training(_job(), tmp_path, "base", [], [], None)
    assert started == [(spawn, True) for spawn in ("spawn_rollouts", "spawn_reference", "spawn_reward",
                                                   "spawn_learners")]
    assert released == [True]


def _grpo_checkpoint(run_dir, config, step=3):
    """What an interrupted GRPO leaves: its config from its start, a checkpoint and the pointer to it."""
    import json

    grpo = run_dir / "grpo"
    (grpo / f"step_{step}").mkdir(parents=True)
    (grpo / f"step_{step}" / "driver.json").write_text(json.dumps({"step": step}))
    (grpo / "latest").write_text(f"step_{step}")
    (grpo / "config.json").write_text(json.dumps(run_config(config)))


def test_grpo_checkpoints_resume_only_the_grpo_that_wrote_them(tmp_path, caplog):
    """A GRPO checkpoint records no config of its own: a rerun after a crash under another GRPO key resumed it, and
    one after deleting the markers as the error says resumed the old policy over a new SFT model. Both are refused,
    naming what to do. More steps are allowed, and so is a lower learning rate: the NaN error tells a diverged run to
    go on at one, and the learners set it after the checkpoint's optimizer state."""
    config = _config()
    _finished(tmp_path, config)
    _grpo_checkpoint(tmp_path, config)
    check_config(tmp_path, config)  # a crash, the same command: resumes
    check_config(tmp_path, _config("trainer.grpo.steps=60"))  # train on
    with pytest.raises(ConfigError, match=re.escape("GRPO run with algorithm.kl_coef=0.001, and this job says "
                                                    "algorithm.kl_coef=0.01")) as err:
        check_config(tmp_path, _config("algorithm.kl_coef=0.01"))
    assert f"move {tmp_path / 'grpo'} aside" in str(err.value)
    with caplog.at_level("WARNING"):
        check_config(tmp_path, _config("trainer.grpo.lr=1e-5"))
    assert "GRPO resumes from step_3 under trainer.grpo.lr=1e-05 (its checkpoints ran at 3e-05)" in caplog.text
    with pytest.raises(ConfigError, match="has 3 GRPO steps done and this job says trainer.grpo.steps=2"):
        check_config(tmp_path, _config("trainer.grpo.steps=2"))
    (tmp_path / "stages" / "sft.done").unlink()  # the user redoes SFT; its GRPO checkpoints would win over it
    (tmp_path / "stages" / "eval_sft.done").unlink()
    with pytest.raises(ConfigError, match="started from the SFT model that this job trains again"):
        check_config(tmp_path, config)


def test_a_new_learning_rate_with_no_grpo_step_left_is_refused(tmp_path):
    """Killed after its last checkpoint and before grpo.done (or rerun under another lr with the markers deleted), a
    GRPO with every step done resumed under a new lr, took no step, and recorded the old model under the new lr."""
    config = _config("trainer.grpo.steps=40")
    _finished(tmp_path, config)
    _grpo_checkpoint(tmp_path, config, step=40)
    check_config(tmp_path, config)  # the same command finishes it
    with pytest.raises(ConfigError, match=re.escape("has all 40 GRPO steps done at trainer.grpo.lr=3e-05, and this job "
                                                    "says 1e-05: no step would run at it")) as err:
        check_config(tmp_path, _config("trainer.grpo.steps=40", "trainer.grpo.lr=1e-5"))
    assert "Rerun with trainer.grpo.lr=3e-05 to finish that run" in str(err.value)
    check_config(tmp_path, _config("trainer.grpo.steps=60", "trainer.grpo.lr=1e-5"))  # steps left: goes on at it


def test_a_run_resumed_at_a_new_learning_rate_finishes_at_it(tmp_path, caplog):
    """Resumed at a lower lr after a NaN, then killed after its last checkpoint: the rerun at that lr was refused as
    "all steps done at" the first lr, which only grpo/config.json (GRPO's start) recorded."""
    import json

    config = _config("trainer.grpo.steps=40")
    _finished(tmp_path, config)
    _grpo_checkpoint(tmp_path, config, step=40)
    (tmp_path / "grpo" / "step_40" / "driver.json").write_text(json.dumps({"step": 40, "lr": 1e-5}))
    check_config(tmp_path, _config("trainer.grpo.steps=40", "trainer.grpo.lr=1e-5"))  # the same command finishes it
    with pytest.raises(ConfigError, match=re.escape("has all 40 GRPO steps done at trainer.grpo.lr=1e-05, and this job "
                                                    "says 3e-05")):
        check_config(tmp_path, config)
    with caplog.at_level("WARNING"):
        check_config(tmp_path, _config("trainer.grpo.steps=60"))
    assert "(its checkpoints ran at 1e-05)" in caplog.text


def test_each_suggested_override_is_one_hydra_accepts(tmp_path):
    """The refusals printed Python's repr: a checkpoint made with a null key said "Rerun with key=None" (Hydra reads
    the string 'None'), and a key one side lacked said "key='(unset)'"."""
    from stepentropy_rl.driver.train import rerun_with

    config = _config("algorithm.loss_scale_factor=null")
    _finished(tmp_path, config)
    _grpo_checkpoint(tmp_path, config)
    with pytest.raises(ConfigError, match=re.escape("Rerun with algorithm.loss_scale_factor=null to resume it")):
        check_config(tmp_path, _config("algorithm.loss_scale_factor=2048"))
    then, now = _config("+data.chat_template_kwargs.enable_thinking=true"), _config()
    other = tmp_path / "other"
    _finished(other, then)
    with pytest.raises(ConfigError, match=re.escape("Rerun with ++data.chat_template_kwargs.enable_thinking=true")):
        check_config(other, now)
    assert rerun_with("data.chat_template_kwargs", "(unset)", {}) == "~data.chat_template_kwargs"


def test_more_grpo_steps_after_a_finished_grpo_say_to_train_on_not_to_start_afresh(tmp_path):
    config = _config()
    _finished(tmp_path, config, names=("init", "eval_base", "prune", "sft", "eval_sft", "grpo", "eval_final"))
    _grpo_checkpoint(tmp_path, config, step=40)
    with pytest.raises(ConfigError) as err:
        check_config(tmp_path, _config("trainer.grpo.steps=60"))
    assert "eval_final.done to train on from its last checkpoint" in str(err.value)
    assert "aside" not in str(err.value)


def test_a_finished_stages_conflict_says_to_move_the_grpo_checkpoints_aside(tmp_path):
    _finished(tmp_path, _config())
    _grpo_checkpoint(tmp_path, _config())
    with pytest.raises(ConfigError, match=re.escape(f"(and move {tmp_path / 'grpo'} aside: its checkpoints resume")):
        check_config(tmp_path, _config("trainer.sft.lr=0.01"))


def test_a_rerun_on_other_problems_is_refused(tmp_path):
    """A data file rewritten in place, or data.overlong=skip dropping other prompts under a changed budget, changed
    the problems behind the remaining stages without a word: the base on one set, the final model on another."""
    from stepentropy_rl.data import Example
    from stepentropy_rl.driver.train import check_same_problems, problems_digest

    held = [Example(id=str(i), prompt=f"q{i}", answer=str(i)) for i in range(4)]
    train = [Example(id=f"t{i}", prompt=f"p{i}", answer=str(i)) for i in range(4)]
    stages = Stages(tmp_path)
    stages.mark("eval_base", {"eval_problems": problems_digest(held)})
    stages.mark("prune", {"train_problems": problems_digest(train)})
    check_same_problems(stages, held, train, tmp_path)
    with pytest.raises(ConfigError, match="the held-out problems differ from those its stage 'eval_base' used"):
        check_same_problems(stages, held[:3], train, tmp_path)
    with pytest.raises(ConfigError, match="the training problems differ"):
        check_same_problems(stages, held, train[:2] + [Example(id="t2", prompt="p2", answer="9"), train[3]], tmp_path)
    check_same_problems(Stages(tmp_path / "old"), held[:1], train, tmp_path)  # markers without a digest pass


@pytest.mark.parametrize("key, before, changed", [("trainer.grpo.optimizer", "continue", "fresh"),
                                                   ("cluster.learner.autocast_bf16", "false", "true"),
                                                   ("model.tiny.fp32_head", "false", "true")])
def test_a_key_added_since_a_run_began_reads_as_its_value_before(tmp_path, key, before, changed):
    """A run whose GRPO finished before the key existed was refused on rerun ('(unset)' against any value); it
    resumes under the value every run had then, and a change from it is still refused."""
    cpu = ["model.tiny.bf16=true"]  # the fp32 head is a change only under bf16 (without AVX-512 bf16 resolves false)
    config = _config(f"{key}={before}", *cpu)
    stages = Stages(tmp_path, {k: v for k, v in run_config(config).items() if k != key})
    for name in ("init", "eval_base", "prune", "sft", "eval_sft", "grpo"):
        stages.mark(name)
    check_config(tmp_path, config)
    with pytest.raises(ConfigError, match=f"{key}=.*, and this job says {key}="):
        check_config(tmp_path, _config(f"{key}={changed}", *cpu))


def test_a_run_begun_before_recap_openers_resumes_at_one_and_the_new_default_is_refused(tmp_path):
    """The task knob is recorded twice (``data.task`` and the tiny reasoner's ``model.tiny.task``): a run whose markers
    have neither was made with one opener, so it resumes under ``recap_openers=1`` and today's default (two openers
    since 2026-12-06: another base) is refused, naming both values."""
    keys = ("data.task.recap_openers", "model.tiny.task.recap_openers")
    recorded = run_config(_config("data.task.recap_openers=1"))
    assert all(recorded[k] == 1 for k in keys)
    assert run_config(_config())["data.task.recap_openers"] == 2
    stages = Stages(tmp_path, {k: v for k, v in recorded.items() if k not in keys})
    for name in ("init", "eval_base", "prune", "sft", "eval_sft", "grpo"):
        stages.mark(name)
    check_config(tmp_path, _config("data.task.recap_openers=1"))
    with pytest.raises(ConfigError, match="recap_openers=1, and this job says .*recap_openers=2"):
        check_config(tmp_path, _config())


@pytest.mark.parametrize("key, before, now, changed", [("model.tiny.stable_steps", 0, 0, 400),
                                                        ("model.tiny.init_std", 0.02, 0.06, 0.06)])
def test_a_run_begun_before_a_recipe_knob_resumes_at_its_old_value_and_a_change_is_refused(tmp_path, key, before, now,
                                                                                          changed):
    """The knob left null (the recipe's value) is recorded resolved (``now``); a marker written before the knob is
    read at the value every run had then (``before``): it resumes under that value, and a job asking for another (the
    default itself where the recipe moved since, as ``init_std`` did) is refused, naming the value the marker is read
    as."""
    recorded = run_config(_config(f"{key}={before}"))
    assert run_config(_config())[key] == now
    stages = Stages(tmp_path, {k: v for k, v in recorded.items() if k != key})
    for name in ("init", "eval_base", "prune", "sft", "eval_sft", "grpo"):
        stages.mark(name)
    check_config(tmp_path, _config(f"{key}={before}"))
    refused = [_config(f"{key}={changed}")] + ([_config()] if now != before else [])
    for config in refused:
        with pytest.raises(ConfigError, match=re.escape(f"{key}={before!r}, and this job says {key}={changed!r}")):
            check_config(tmp_path, config)


def test_a_marker_with_one_norm_adv_by_std_reads_as_both_stages(tmp_path):
    """``algorithm.norm_adv_by_std`` was one bool before it was per stage: a run whose GRPO finished then resumes
    under the same value for both stages, and a stage changed from it is still refused."""
    config = _config()
    old = {k: v for k, v in run_config(config).items() if not k.startswith("algorithm.norm_adv_by_std")}
    stages = Stages(tmp_path, {**old, "algorithm.norm_adv_by_std": True})
    for name in ("init", "eval_base", "prune", "sft", "eval_sft", "grpo"):
        stages.mark(name)
    check_config(tmp_path, config)
    check_config(tmp_path, _config("algorithm.norm_adv_by_std=true"))
    with pytest.raises(ConfigError, match="algorithm.norm_adv_by_std.explore=True, and this job says "
                                          "algorithm.norm_adv_by_std.explore=False"):
        check_config(tmp_path, _config("algorithm.norm_adv_by_std={compress:true,explore:false}"))


def test_keys_a_finished_stage_does_not_read_do_not_refuse_its_resume(tmp_path):
    """data.reward_scale fills reward keys, which are recorded resolved: entropy_guided, whose reward reads no skip
    limit, resumed a finished GRPO only under the old max_skips. rollout.max_tokens and the answer budget write the
    prune stage's CoTs; the evaluations sample with trainer.eval's, so a run past eval_base but not prune resumes."""
    config = _config()
    _finished(tmp_path, config, names=("init", "eval_base", "prune", "sft", "eval_sft", "grpo"))
    check_config(tmp_path, _config("data.reward_scale.max_skips=40"))
    check_config(tmp_path, _config("cluster.learner.sync_bucket_mb=8"))  # a push cut otherwise sends the same
    with pytest.raises(ConfigError, match="reward.length_budget=96, and this job says reward.length_budget=50"):
        check_config(tmp_path, _config("data.reward_scale.length_budget=50"))
    early = tmp_path / "early"
    _finished(early, config, names=("init", "eval_base"))
    check_config(early, _config("rollout.max_tokens=400", "rollout.answer_max_tokens=40"))
    with pytest.raises(ConfigError, match="'prune' with rollout.max_tokens=384"):
        check_config(tmp_path, _config("rollout.max_tokens=400"))


@pytest.mark.parametrize("old_default, lacks", [
    (["model.tiny.fp32_head=false", "model.tiny.init_std=0.02", "data.task.recap_openers=1"],
     ("fp32_head", "init_std", "stable_steps")),  # the bf16-head default (2026-12-05)
    (["model.tiny.init_std=0.02", "data.task.recap_openers=1"], ("init_std",))])  # the fp32-head one (2026-12-06)
def test_a_run_begun_under_an_older_default_is_told_how_to_resume(tmp_path, old_default, lacks):
    """A run begun under an older verbose default (its base's bootstrap.json has neither the knobs added since nor
    the task's recap_openers) is refused with the overrides that train its base again, model.tiny.* and data.task.*
    alike (not the head where the CPU trains in fp32, where it makes no other model), and resumes under them."""
    import dataclasses

    from stepentropy_rl.tiny_config import tiny_model_path

    job, old_job = _job(), _job(*old_default)
    old_tiny = dataclasses.replace(old_job.model.tiny, task=old_job.data.task)
    old, now = tiny_model_path(old_tiny), tiny_model_path(dataclasses.replace(job.model.tiny, task=job.data.task))
    recorded = {k: v for k, v in dataclasses.asdict(old_tiny.resolved()).items() if k not in lacks}
    recorded["task"] = {k: v for k, v in recorded["task"].items() if k != "recap_openers"}
    base = tmp_path / "cache" / old.name
    base.mkdir(parents=True)
    (base / "bootstrap.json").write_text(json.dumps({"config": recorded}))
    run = tmp_path / "run"
    Stages(run).mark("init", {"base": str(base)})
    assert old.name != now.name
    with pytest.raises(ConfigError, match="or rerun with ") as refused:
        check_same_tiny(run, job)
    asked = str(refused.value).split("or rerun with ")[1].removesuffix(" to resume it").split()
    assert sorted(asked) == sorted(o for o in old_default if not (o.startswith("model.tiny.fp32_head") and
                                                                  not old_tiny.resolved().bf16))
    check_same_tiny(run, old_job)


def test_fp32_training_records_the_head_as_it_trains_it():
    """Training in fp32 has its logits in fp32 whatever fp32_head says (one model, one cache key), so the recipe is
    recorded with the head off, as every marker before the knob reads: a run begun then resumes."""
    tiny = _config("model.tiny.bf16=false")["model"]["tiny"]
    assert tiny["fp32_head"] is False and tiny["bf16"] is False
    assert _config("model.tiny.bf16=true")["model"]["tiny"]["fp32_head"] is True


def test_the_recipe_to_train_an_old_base_sets_the_head_with_bf16_and_must_give_its_key():
    """A base trained under bf16 with the head in bf16, resumed where bf16 resolves false: bf16=true alone would
    resolve the head on (another model), so the head is named too; values that cannot give the base's key are None."""
    import dataclasses

    from stepentropy_rl.tasks.basket import BasketConfig
    from stepentropy_rl.tiny_config import TinyConfig, recipe_to_train, tiny_model_path

    verbose = BasketConfig(style="verbose")
    old = TinyConfig(task=verbose, bf16=True, fp32_head=False)
    recorded = {k: v for k, v in dataclasses.asdict(old.resolved()).items() if k not in ("task", "fp32_head")}
    name = tiny_model_path(old).name
    assert recipe_to_train(recorded, TinyConfig(task=verbose, bf16=False), name) == {"bf16": True, "fp32_head": False}
    assert recipe_to_train(recorded, TinyConfig(task=verbose, bf16=True), name) == {"fp32_head": False}
    assert recipe_to_train(recorded, TinyConfig(task=verbose, bf16=True), "tiny-000000000000") is None
    # a task knob the base's bootstrap.json lacks was at its old value, and comes back as a data.task override
    old = TinyConfig(task=BasketConfig(style="verbose"), bf16=True, init_std=0.02)
    was = {k: v for k, v in dataclasses.asdict(old.resolved()).items() if k != "init_std"}
    was["task"] = {k: v for k, v in was["task"].items() if k != "recap_openers"}
    new = TinyConfig(task=BasketConfig(style="verbose", recap_openers=2), bf16=True)
    assert recipe_to_train(was, new, tiny_model_path(old).name) == {"init_std": 0.02, "task.recap_openers": 1}


def test_a_run_that_recorded_the_head_on_under_fp32_training_resumes(tmp_path):
    """Between 2026-12-05 and 12-06 fp32_head was recorded as set; under fp32 training it changes nothing, and the
    resolved record (false) does not refuse such a run."""
    config = _config("model.tiny.bf16=false")
    then = {**run_config(config), "model.tiny.fp32_head": True}
    stages = Stages(tmp_path, then)
    for name in ("init", "eval_base", "prune", "sft", "eval_sft"):
        stages.mark(name)
    check_config(tmp_path, config)
    config = _config("model.tiny.bf16=true", "model.tiny.fp32_head=false")  # under bf16 the head is a change
    Stages(tmp_path / "bf16", {**run_config(config), "model.tiny.fp32_head": True}).mark("init")
    with pytest.raises(ConfigError, match="model.tiny.fp32_head=.*, and this job says model.tiny.fp32_head="):
        check_config(tmp_path / "bf16", config)
