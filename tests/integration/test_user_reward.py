"""A user's reward and grader reach the reward service: the Ray actor imports the user's file in its own process."""
import torch

from stepentropy_rl.batch import Batch
from tests.unit.test_hooks import REWARD


def test_the_reward_actor_imports_the_users_file_itself(scorer, ray_session):
    """A term defined in a user's file reaches the reward service: the Ray actor loads it in its own process."""
    import ray

    from stepentropy_rl.config import DataConfig
    from workers.reward import RewardWorker

    data = DataConfig(grader=f"{scorer}:grade", task=None)
    actor = RewardWorker.remote({**REWARD, "custom": {"path": scorer, "weight": 1.0}}, data, 5, 9)
    batch = Batch.from_pairs([[1], [1]], [[1, 9, 2], [1, 9, 2]], 0, text=["a</think>is 7", "a</think>is 8"],
                             answer=["7", "7"], data_source=["x", "x"], extra_info=[{"hard": True}, {}])
    out = ray.get(actor.score.remote("explore", batch))
    assert out["correct"].tolist() == [1.0, 0.0]  # the user's grader
    assert torch.allclose(out["custom"], torch.tensor([1.5, 0.0]))  # the user's scorer, with its extra_info
    ray.kill(actor)
