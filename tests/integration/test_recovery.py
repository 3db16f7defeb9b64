"""A rollout engine that dies mid-step is restarted by Ray, gets back what its group serves, and its share is retried."""
import os

import pytest
import ray

from stepentropy_rl.driver.rollout_group import RolloutGroup

pytestmark = pytest.mark.engine


@ray.remote(max_restarts=2, max_task_retries=0)
class Flaky:
    """Dies on its first generate call after each (re)start while a marker file exists; a (re)start serves
    "initial", as an engine restarted from its spawn checkpoint does."""

    def __init__(self, marker: str):
        self.marker, self.weights = marker, "initial"

    def generate(self, prompts, sampling):
        if os.path.exists(self.marker):
            os.remove(self.marker)
            os._exit(1)
        return [[{"text": f"{p}:{self.weights}"}] for p in prompts]

    def load_weights_from(self, model_dir):
        self.weights = model_dir

    def ping(self):
        return "ok"


class FakeSync:
    """Stands in for the learners' weight broadcast: a push makes every engine serve "policy"."""

    open = True

    def __init__(self, engines):
        self.engines, self.calls = engines, []

    def reopen(self):
        self.calls.append("reopen")

    def push(self):
        self.calls.append("push")
        ray.get([w.load_weights_from.remote("policy") for w in self.engines])
        return 8


def _group(tmp_path):
    marker = tmp_path / "die"
    return RolloutGroup([Flaky.remote(str(marker)), Flaky.remote(str(tmp_path / "never"))], "initial"), marker


def test_dead_engine_restarted_gets_the_pushed_policy_back_and_its_share_retried(ray_session, tmp_path):
    group, marker = _group(tmp_path)
    group.sync = FakeSync(group.engines)
    assert group.push_weights()["version"] == 1 and group.serving == "policy@1"
    marker.write_text("x")
    out = group.generate(["a", "b", "c", "d"], {})
    assert [o[0]["text"] for o in out] == ["a:policy", "b:policy", "c:policy", "d:policy"]
    assert group.sync.calls == ["push", "reopen", "push"]  # a new group with the restarted engine, same weights
    assert group.version == 1


def test_dead_engine_restarted_reloads_the_checkpoint_the_group_serves(ray_session, tmp_path):
    group, marker = _group(tmp_path)
    group.serve("models/sft")
    group.serve("models/sft")  # already served: no reload
    marker.write_text("x")
    out = group.generate(["a", "b", "c"], {})
    assert [o[0]["text"] for o in out] == ["a:models/sft", "b:models/sft", "c:models/sft"]


def test_an_engine_that_keeps_dying_ends_the_step_with_an_error(ray_session, tmp_path):
    @ray.remote(max_restarts=-1, max_task_retries=0)
    class Dies:
        def generate(self, prompts, sampling):
            os._exit(1)

        def ping(self):
            return "ok"

    group = RolloutGroup([Dies.remote()], "initial", retries=1)
    with pytest.raises(RuntimeError, match="kept failing after 1 retries"):
        group.generate(["a"], {})


@ray.remote(max_restarts=2, max_task_retries=0)
class Engine:
    """Serves "initial" after each (re)start, under a new incarnation (``Rollout.ping``)."""

    def __init__(self):
        import uuid

        self.weights, self.incarnation = "initial", uuid.uuid4().hex

    def generate(self, prompts, sampling):
        return [[{"text": f"{p}:{self.weights}"}] for p in prompts]

    def load_weights_from(self, model_dir):
        self.weights = model_dir

    def ping(self):
        return self.incarnation


def test_an_engine_restarted_between_calls_is_found_and_given_back_what_the_group_serves(ray_session):
    """A crash while an engine is idle fails no call: the next one reaches the new instance, which serves the spawn
    checkpoint. Its share is not kept, the weight-sync group is reopened, and pushes and checkpoints reach it."""
    from stepentropy_rl.driver.faults import crash
    from stepentropy_rl.driver.rollout_group import wait_alive

    group = RolloutGroup([Engine.remote(), Engine.remote()], "initial")
    group.sync = FakeSync(group.engines)
    group.push_weights()
    crash(group.engines[0])
    wait_alive(group.engines[:1])
    out = group.generate(["a", "b", "c"], {})
    assert [o[0]["text"] for o in out] == ["a:policy", "b:policy", "c:policy"]
    assert group.sync.calls == ["push", "reopen", "push"]
    crash(group.engines[1])
    wait_alive(group.engines[1:])
    group.push_weights()  # its old group lost a member: a new one before the push
    assert group.sync.calls[3:] == ["reopen", "push"] and group.version == 2
    group.serve("models/sft")
    crash(group.engines[0])
    wait_alive(group.engines[:1])
    group.serve("models/sft")  # the group already serves it, but the restarted engine does not
    assert [o[0]["text"] for o in group.generate(["a", "b"], {})] == ["a:models/sft", "b:models/sft"]
