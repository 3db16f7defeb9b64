"""Progress reporting: workers count and tell the board at most every ``every_s`` seconds; vLLM's bar hook counts
finished samples and passes the request-adding loop through; ``trainer.progress`` takes auto | true | false."""
import pytest

from stepentropy_rl.progress_report import Reporter, vllm_bar


class _Board:
    def __init__(self):
        self.seen = []
        self.report = self

    def remote(self, key, done):
        self.seen.append((key, done))


def test_a_reporter_throttles_and_always_tells_the_final_count():
    board = _Board()
    rep = Reporter((board, "gen0/1"), every_s=3600)
    for _ in range(5):
        rep.update(2)
    rep.close()
    assert board.seen == [("gen0/1", 0), ("gen0/1", 10)]
    eager = Reporter((board, "k"), every_s=0)
    eager.update(1)
    assert board.seen[-1] == ("k", 1)
    Reporter(None).update(3)  # bars off: counting goes nowhere


def test_the_vllm_hook_counts_samples_and_passes_iterables_through():
    board = _Board()
    make = vllm_bar((board, "k"))
    prompts = [1, 2, 3]
    assert make(prompts, desc="Adding requests") is prompts
    bar = make(total=3, desc="Processed prompts", dynamic_ncols=True, postfix="")
    bar.update(2)  # what vLLM's _run_engine calls: update, n, format_dict["elapsed"], postfix, refresh, close
    bar.postfix = "est. speed"
    assert bar.n == 2 and bar.format_dict["elapsed"] > 0
    bar.refresh()
    bar.close()
    assert board.seen[-1] == ("k", 2)


def test_progress_setting_is_checked():
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.typed import ConfigError
    from tests.unit.test_prune_study import CONF

    for ok in ("auto", "true", "false"):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            cfg = compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", f"trainer.progress={ok}"])
        assert build(cfg).trainer.progress == {"auto": "auto", "true": True, "false": False}[ok]
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", "trainer.progress=sometimes"])
    with pytest.raises(ConfigError, match="trainer.progress must be one of"):
        build(cfg)


def test_a_dead_board_turns_the_bars_off_instead_of_stopping_the_run(monkeypatch):
    """The board actor has no restarts: its death made the next wait raise inside a generation, before any result
    was fetched, so a progress bar could end a training run."""
    import ray.exceptions

    from stepentropy_rl.driver import progress

    class DeadBoard:
        class read:
            @staticmethod
            def remote(keys):
                raise ray.exceptions.ActorDiedError()

    waits = []

    def fake_wait(refs, num_returns, timeout=None):
        waits.append(timeout)
        return ([], list(refs)) if timeout is not None else (list(refs), [])

    monkeypatch.setattr(progress.ray, "wait", fake_wait)
    monkeypatch.setattr(progress, "_board", DeadBoard())
    progress.wait(["ref"], ["gen0/0"], "generating", 4, "sample")
    assert progress.board() is None and waits == [0.5, None]  # then waited for the refs without a board
