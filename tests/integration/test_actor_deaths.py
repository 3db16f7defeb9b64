"""Every role can die: the reference and the reward service are restarted by Ray and the call retried; a dead
learner rank stops its group at once with a message naming it (the rerun resumes: tests/e2e/test_train_e2e.py)."""
import pytest
import ray
import torch

from stepentropy_rl.batch import Batch
from stepentropy_rl.config import LearnerCluster, OptimConfig, build
from stepentropy_rl.driver.faults import crash
from stepentropy_rl.driver.remote import ActorLost
from stepentropy_rl.driver.roles import spawn_learners, spawn_reference, spawn_reward
from tests.unit.test_config import cfg

pytestmark = pytest.mark.engine


def _job(*overrides):
    return build(cfg("cluster.reference.num_cpus=0.1", "cluster.reward.num_cpus=0.1", *overrides))


def _batch(tok, texts, answers):
    pid = tok("Q?", add_special_tokens=False).input_ids
    return Batch.from_pairs([pid] * len(texts), [tok(t, add_special_tokens=False).input_ids for t in texts],
                            pad_id=0, text=list(texts), answer=list(answers))


def test_a_dead_reward_service_is_restarted_and_its_call_retried(ray_session, micro_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model)
    reward = spawn_reward(_job(), skip_id=-1, close_id=-1)
    batch = _batch(tok, ["x</think>The answer is \\boxed{8}.", "x</think>\\boxed{9}"], ["8", "8"])
    before = ray.get(reward.score.remote("explore", batch))
    crash(reward)  # kill -9: Ray restarts it (max_restarts) and retries the call (max_task_retries)
    after = ray.get(reward.score.remote("explore", batch), timeout=120)
    assert after["correct"].tolist() == [1.0, 0.0]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_dead_reference_is_restarted_reloads_its_model_and_its_call_is_retried(ray_session, micro_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model)
    reference = spawn_reference(_job(), micro_model)
    batch = _batch(tok, ["The basket starts with 3.", "Now Ann 2: 3 + 2 = 5."], ["5", "5"])
    before = ray.get(reference.score.remote(batch))
    crash(reference)
    after = ray.get(reference.score.remote(batch), timeout=300)
    assert torch.allclose(before["logprobs"], after["logprobs"]) and before["logprobs"].abs().sum() > 0


def test_a_reference_restarted_mid_grpo_scores_with_the_model_it_was_asked_for(ray_session, micro_model, tmp_path):
    """Ray restarts a dead reference with the model it was started with (the pre-SFT init); GRPO names its KL
    reference in each call, so the retried call and every later one score with it, not with the init model."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model)
    sft = tmp_path / "sft"  # another model: the micro model with its output layer scaled
    shutil.copytree(micro_model, sft)
    model = AutoModelForCausalLM.from_pretrained(sft)
    model.lm_head.weight.data *= 2.0
    model.save_pretrained(sft)
    reference = spawn_reference(_job(), micro_model)
    batch = _batch(tok, ["The basket starts with 3.", "Now Ann 2: 3 + 2 = 5."], ["5", "5"])
    init_scores = ray.get(reference.score.remote(batch))
    ray.get(reference.load.remote(str(sft)))
    before = ray.get(reference.score.remote(batch, model_path=str(sft)))
    assert not torch.allclose(before["logprobs"], init_scores["logprobs"])
    crash(reference)
    after = ray.get(reference.score.remote(batch, model_path=str(sft)), timeout=300)
    assert torch.allclose(before["logprobs"], after["logprobs"])


def test_cluster_threads_reach_the_actor_before_torch_loads(ray_session, micro_model):
    """Ray starts a fractional-CPU actor with one OpenMP thread; ``threads`` sets it (-1: every core), which on 2 cores
    nearly doubled the engine's tokens/s (``roles.thread_env``)."""
    import os

    from stepentropy_rl.driver.roles import thread_env

    cores = len(os.sched_getaffinity(0))
    assert thread_env(0) == {} and thread_env(3)["runtime_env"]["env_vars"] == {"OMP_NUM_THREADS": "3"}
    assert thread_env(-1)["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == str(cores)
    default, every, two = (spawn_reference(_job(f"cluster.reference.threads={n}"), micro_model) for n in (0, -1, 2))
    try:
        assert ray.get([a.num_threads.remote() for a in (default, every, two)]) == [1, cores, 2]
    finally:
        for a in (default, every, two):
            ray.kill(a)


def test_with_restarts_off_a_dead_reward_service_stays_dead(ray_session):
    """The control: the recovery above is the restart policy's doing."""
    reward = spawn_reward(_job("cluster.reward.max_restarts=0"), skip_id=-1, close_id=-1)
    ray.get(reward.score.remote("explore", Batch.from_pairs([[1]], [[2]], pad_id=0, text=["x"], answer=["1"])))
    crash(reward)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(reward.score.remote("explore", Batch.from_pairs([[1]], [[2]], pad_id=0, text=["x"], answer=["1"])),
                timeout=120)


def test_a_dead_learner_rank_stops_the_group_at_once_naming_it(ray_session, micro_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model)
    group = spawn_learners(micro_model, LearnerCluster(world_size=2, num_cpus=0.25),
                           OptimConfig(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0, grad_clip=1.0),
                           micro_batch_size=2, pad_id=0)
    batch = _batch(tok, ["The basket starts with 3.", "Now Ann 2: 3 + 2 = 5."], ["5", "5"])
    try:
        group.train_step(batch, {"kind": "sft"})
        crash(group.ranks[1])
        with pytest.raises(ActorLost, match="learner rank 1 of 2 died during a training step"):
            group.train_step(batch, {"kind": "sft"})
        assert _stops(group.ranks[0])  # rank 0 is stopped too, not left waiting in a collective
    finally:
        group.shutdown()


def _stops(actor, timeout_s: float = 60.0) -> bool:
    """The actor is dead within ``timeout_s`` (``ray.kill`` takes effect a moment after it returns)."""
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            ray.get(actor.set_lr.remote(1e-3), timeout=10)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.5)
    return False


def test_actors_are_named_by_role_and_rank_for_the_dashboard(ray_session, micro_model):
    """``rollout-0``, ``reference``, ``reward``, ``learner-0``, ``learner-1``: a second group in the same namespace
    gets ``.2``, ... instead of failing on a taken name."""
    import re

    from stepentropy_rl.driver.roles import named

    first, second = spawn_reward(_job(), skip_id=-1, close_id=-1), spawn_reward(_job(), skip_id=-1, close_id=-1)
    group = spawn_learners(micro_model, LearnerCluster(world_size=2, num_cpus=0.25),
                           OptimConfig(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0, grad_clip=1.0),
                           micro_batch_size=2, pad_id=0)
    try:
        names = set(ray.util.list_named_actors())
        rewards = {n for n in names if re.fullmatch(r"reward(\.\d+)?", n)}
        assert len(rewards) >= 2 and {re.fullmatch(r"learner-[01](\.\d+)?", n) is not None for n in names} >= {True}
        assert {n.split(".")[0] for n in names} >= {"reward", "learner-0", "learner-1"}
        assert named("reward")["name"] not in names
    finally:
        group.shutdown()
        for a in (first, second):
            ray.kill(a)
