"""An engine's saved random state covers every generator vLLM samples from: torch's (its CPU sampler) and numpy's
global one (its V2 GPU model runner draws each request's seed there); a resumed run draws what it would have."""
import numpy as np
import torch

from workers.rollout import Rollout


def _draws():
    return torch.rand(3).tolist(), np.random.randint(0, 2 ** 31, size=3).tolist()


def test_restoring_the_state_repeats_torch_and_numpy_draws():
    state = Rollout.rng_state(None)  # the methods read no engine state
    first = _draws()
    assert _draws() != first
    Rollout.set_rng_state(None, state)
    assert _draws() == first


def test_an_older_runs_bare_torch_state_is_still_read():
    legacy = torch.get_rng_state().numpy().tobytes()
    first = torch.rand(3).tolist()
    Rollout.set_rng_state(None, legacy)
    assert torch.rand(3).tolist() == first


def test_a_bare_torch_state_that_starts_like_a_zip_is_still_read():
    torch.manual_seed(0x4B50)  # the state's first bytes spell "PK"
    legacy = torch.get_rng_state().numpy().tobytes()
    assert legacy.startswith(b"PK")
    first = torch.rand(3).tolist()
    Rollout.set_rng_state(None, legacy)
    assert torch.rand(3).tolist() == first


def test_an_engine_dead_for_good_stops_the_run_with_actor_lost():
    """An engine whose restarts were used up (or whose start fails each time) escaped generate as a raw
    ActorDiedError trace; the run now stops with one line, as for a dead learner."""
    import pytest
    import ray.exceptions

    from stepentropy_rl.driver.remote import ActorLost
    from stepentropy_rl.driver.rollout_group import wait_alive

    class Dead:
        class ping:
            @staticmethod
            def remote():
                raise ray.exceptions.ActorDiedError()

    with pytest.raises(ActorLost, match="a rollout engine died and could not be restarted"):
        wait_alive([Dead()], timeout_s=5)
