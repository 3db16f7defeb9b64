"""A rollout worker that dies mid-step is restarted by Ray, gets the current weights again, and the step retries."""
import os

import pytest
import ray

from stepentropy_rl.grpo import Prompts, generate_with_recovery, token_rewards

pytestmark = pytest.mark.engine


@ray.remote(max_restarts=2, max_task_retries=0)
class Flaky:
    """Dies on its first generate call after each (re)start while a marker file exists."""

    def __init__(self, marker: str):
        self.marker, self.weights = marker, "initial"

    def generate(self, prompts, sampling):
        if os.path.exists(self.marker):
            os.remove(self.marker)
            os._exit(1)
        return [[{"text": f"{p}:{self.weights}"}] for p in prompts]

    def load_weights(self, blob):
        self.weights = blob

    def ping(self):
        return "ok"


def test_dead_worker_restarted_weights_pushed_and_step_retried(ray_session, tmp_path):
    marker = tmp_path / "die"
    marker.write_text("x")
    workers = [Flaky.remote(str(marker)), Flaky.remote(str(tmp_path / "never"))]
    pushed = []

    def push(ws):
        pushed.append(len(ws))
        ray.get([w.load_weights.remote("current") for w in ws])

    out = generate_with_recovery(workers, ["a", "b", "c", "d"], {}, push)
    assert [o[0]["text"] for o in out] == ["a:current", "b:initial", "c:current", "d:initial"]
    assert pushed == [1]


def test_prompt_stream_resumes_at_the_same_position():
    probs = list(range(10))
    a = Prompts(probs, seed=3)
    first = a.next(7)
    b = Prompts(probs, seed=3, epoch=a.epoch, index=a.index)
    assert a.next(8) == b.next(8)
    assert sorted(first + Prompts(probs, seed=3, epoch=0, index=7).next(3)) == probs


def test_token_rewards_on_last_token():
    r, m = token_rewards([1.0, -2.0], [3, 1])
    assert r.tolist() == [[0, 0, 1.0], [-2.0, 0, 0]] and m.tolist() == [[1, 1, 1], [1, 0, 0]]
