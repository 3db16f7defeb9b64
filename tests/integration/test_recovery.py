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

    def rng_state(self):
        return b""

    def set_rng_state(self, state):
        pass


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

        def rng_state(self):
            return b""

        def set_rng_state(self, state):
            pass

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

    def rng_state(self):
        return b""

    def set_rng_state(self, state):
        pass


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


@ray.remote(max_restarts=2, max_task_retries=0)
class Sampler:
    """Draws one number a prompt from a counter that stands in for the sampler's random state; a (re)start begins at
    100, as a restarted engine's generator does not continue where the dead one was. Dies on a generate call while
    ``marker`` exists."""

    def __init__(self, marker: str):
        import uuid

        self.marker, self.draws, self.incarnation = marker, 100, uuid.uuid4().hex

    def generate(self, prompts, sampling):
        if os.path.exists(self.marker):
            os.remove(self.marker)
            os._exit(1)
        out = [[{"text": f"{p}:{self.draws + j}"}] for j, p in enumerate(prompts)]
        self.draws += len(prompts)
        return out

    def ping(self):
        return self.incarnation

    def rng_state(self):
        return str(self.draws).encode()

    def set_rng_state(self, state):
        self.draws = int(state)

    def load_weights_from(self, model_dir):
        pass


def test_a_retried_share_samples_what_the_uninterrupted_run_did(ray_session, tmp_path):
    """An engine that died mid-call, or was restarted between calls, redoes its share from the random state it had
    before the call (the restarted instance's own state gave other samples than an uninterrupted run), whether a
    generation, a weight push or a checkpoint load finds the restart first."""
    from stepentropy_rl.driver.faults import crash
    from stepentropy_rl.driver.rollout_group import wait_alive

    def texts(group, prompts):
        return [o[0]["text"] for o in group.generate(prompts, {})]

    def run(tmp, fault=None, then=None):
        group = RolloutGroup([Sampler.remote(str(tmp / "die0")), Sampler.remote(str(tmp / "die1"))], "initial")
        group.sync = FakeSync(group.engines)
        got = [texts(group, ["a", "b", "c", "d"])]
        if fault == "between calls":
            crash(group.engines[0])
            wait_alive(group.engines[:1])
        elif fault == "mid-call":
            (tmp / "die1").write_text("x")
        if then == "push":  # the push finds the restart first (GRPO: an engine lost during the update)
            group.push_weights()
        elif then == "serve":  # as the evaluation's load does
            group.serve("models/sft")
        got.append(texts(group, ["e", "f", "g", "h"]))
        got.append(texts(group, ["i", "j"]))
        return got

    for d in "abcdef":
        (tmp_path / d).mkdir()
    clean = run(tmp_path / "a")
    assert clean[1] == ["e:102", "f:102", "g:103", "h:103"]
    assert run(tmp_path / "b", "between calls") == clean
    assert run(tmp_path / "c", "mid-call") == clean
    assert run(tmp_path / "d", "between calls", "push") == run(tmp_path / "e", None, "push") == clean
    assert run(tmp_path / "f", "between calls", "serve") == clean


def test_a_share_retried_in_the_groups_first_call_draws_from_the_state_before_it(ray_session, tmp_path):
    """The group recorded which engines it had only after its first call: an engine that died in that call came back
    as the one it knew, and redid its share from the restarted engine's own state, not the one seen before the call
    (here the engines drew before the group's first call, as a study's engines may)."""
    def first_call(tmp, die):
        tmp.mkdir()
        engines = [Sampler.remote(str(tmp / "die0")), Sampler.remote(str(tmp / "die1"))]
        ray.get([e.set_rng_state.remote(b"105") for e in engines])
        if die:
            (tmp / "die1").write_text("x")
        return [o[0]["text"] for o in RolloutGroup(engines, "initial").generate(["a", "b", "c", "d"], {})]

    clean = first_call(tmp_path / "clean", False)
    assert clean == ["a:105", "b:105", "c:106", "d:106"]
    assert first_call(tmp_path / "died", True) == clean


def test_an_engine_dying_during_the_weight_push_gets_a_new_group_and_the_push_again(ray_session):
    """The push fails when a member dies mid-way (``weight_sync.send`` raises on the learner); the engine comes back,
    every engine joins a new group and the whole push is repeated. A failure with every engine alive is raised."""
    from stepentropy_rl.driver.faults import crash

    class DiesOnce(FakeSync):
        def push(self):
            if "push" not in self.calls:
                self.calls.append("push")
                crash(self.engines[1])  # mid-push
                raise RuntimeError("weight sync: a broadcast to the engines failed after 0 bytes")
            return super().push()

    group = RolloutGroup([Engine.remote(), Engine.remote()], "initial")
    group.sync = DiesOnce(group.engines)
    assert group.push_weights()["version"] == 1 and group.sync.calls == ["push", "reopen", "push"]
    assert [o[0]["text"] for o in group.generate(["a", "b"], {})] == ["a:policy", "b:policy"]

    class Fails(FakeSync):
        def push(self):
            self.calls.append("push")
            raise RuntimeError("not an engine's death")

    group.sync = Fails(group.engines)
    with pytest.raises(RuntimeError, match="not an engine's death"):
        group.push_weights()
    assert group.sync.calls == ["push"] and group.version == 1
