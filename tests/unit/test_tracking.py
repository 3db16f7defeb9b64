"""Where metrics go: the JSONL file always, wandb (offline) with one run per run directory and a sweep's group,
TensorBoard on request."""
import json

import pytest

from stepentropy_rl.config import LoggerConfig
from stepentropy_rl.driver.tracking import Tracker, run_id


def test_run_ids_are_stable_for_a_directory_and_distinct_between_two_sweeps(tmp_path):
    a, b = tmp_path / "sweep_a" / "0", tmp_path / "sweep_b" / "0"  # job 0 of two sweeps
    assert run_id(a) == run_id(a) and run_id(a) != run_id(b) and run_id(a).startswith("0-")


def test_tensorboard_gets_the_scalars_tables_and_images(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plt.plot([0, 1], [1, 0])
    plt.savefig(tmp_path / "plot.png")
    t = Tracker(tmp_path, LoggerConfig(wandb="disabled", tensorboard=True))
    for step in range(3):
        t.log({"reward/total": 0.5 * step, "phase/stage": 0}, step=step)
    t.results({"auroc": 0.9}, {"results": [{"ratio": 0.2, "accuracy": 0.9}]}, {"accuracy_vs_ratio": tmp_path / "plot.png"})
    t.finish()
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [e.value for e in events.Scalars("reward/total")] == [0.0, 0.5, 1.0]
    assert "accuracy_vs_ratio" in events.Tags()["images"]
    assert json.loads((tmp_path / "tracking.json").read_text())["tensorboard"] == str(tmp_path / "tensorboard")


def test_a_rewound_run_has_each_step_once_in_tensorboard(tmp_path):
    """A resumed run makes the steps after its last checkpoint again: TensorBoard had them twice (the old values
    drawn beside the new); it now mirrors metrics.jsonl, an earlier stage's steps included."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = Tracker(tmp_path, LoggerConfig(wandb="disabled", tensorboard=True))
    for step in range(4):
        t.log({"sft/loss": 1.0 / (step + 1)}, step=step)
    for step in range(3):
        t.log({"reward/total": float(step)}, step=step)
        if step == 0:
            checkpoint = t.size()
    t.finish()
    t = Tracker(tmp_path, LoggerConfig(wandb="disabled", tensorboard=True))  # the rerun
    t.rewind(checkpoint)
    for step in (1, 2):
        t.log({"reward/total": 10.0 + step}, step=step)
    t.finish()
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/total")] == [(0, 0.0), (1, 11.0), (2, 12.0)]
    assert [e.step for e in events.Scalars("sft/loss")] == [0, 1, 2, 3]


def test_a_run_killed_while_rewriting_tensorboard_has_it_rewritten_by_the_rerun(tmp_path, monkeypatch):
    """Killed after cutting metrics.jsonl and before TensorBoard was whole again, the rerun had nothing left to cut
    and kept the old events: steps made again were there twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = Tracker(tmp_path, LoggerConfig(wandb="disabled", tensorboard=True))
    for step in range(3):
        t.log({"reward/total": float(step)}, step=step)
        if step == 0:
            checkpoint = t.size()
    t.finish()
    t = Tracker(tmp_path, LoggerConfig(wandb="disabled", tensorboard=True))

    def killed(fresh=False):
        raise KeyboardInterrupt("killed while rewriting the events")

    monkeypatch.setattr(t, "_tensorboard", killed)
    with pytest.raises(KeyboardInterrupt):
        t.rewind(checkpoint)
    monkeypatch.undo()
    t = Tracker(tmp_path, LoggerConfig(wandb="disabled", tensorboard=True))  # the second rerun
    t.rewind(checkpoint)  # nothing left to cut
    t.log({"reward/total": 11.0}, step=1)
    t.finish()
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/total")] == [(0, 0.0), (1, 11.0)]
    assert not (tmp_path / "tensorboard.stale").exists()


def test_the_dashboard_gauges_are_set_again_until_the_run_ends(monkeypatch):
    """Ray's agent keeps a gauge's value about 20 s: between GRPO steps longer than that the panels went empty."""
    import threading

    import ray
    import ray.util.metrics

    from stepentropy_rl.driver.ray_metrics import RayGauges

    sets, enough = [], threading.Event()

    class Gauge:
        def __init__(self, name, description, tag_keys):
            self.name = name

        def set(self, value, tags):
            sets.append((self.name, value, tags["run"]))
            if len(sets) >= 4:
                enough.set()

    monkeypatch.setattr(ray.util.metrics, "Gauge", Gauge)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # the run's session (none here; the gauges are fakes)
    gauges = RayGauges("job0-abc", every_s=0.01)
    gauges.update({"step": 3, "reward/total": 0.5, "sync/bytes": 7})
    assert enough.wait(30)  # set again, with nothing new logged
    gauges.stop()
    gauges.thread.join(30)
    assert not gauges.thread.is_alive()
    assert set(sets) == {("stepentropy_step", 3.0, "job0-abc"), ("stepentropy_reward_total", 0.5, "job0-abc")}


def test_each_scoring_call_reports_under_its_own_key(monkeypatch):
    """The scoring bar's key was id(batch): a later batch can get a freed one's id, and the bar then started at the
    old call's count."""
    import torch

    from stepentropy_rl.driver import progress, remote

    keys = []

    class Reference:
        class score:
            @staticmethod
            def remote(batch, batch_size, chunk_rows, progress=None):
                keys.append(progress[1])
                return {"entropy": torch.zeros_like(batch.loss_mask, dtype=torch.float32)}

    monkeypatch.setattr(progress, "board", lambda: "board")
    monkeypatch.setattr(progress, "wait", lambda *a: None)
    monkeypatch.setattr(remote, "id", lambda obj: 7, raising=False)  # the same id twice, as after a free
    for _ in range(2):
        remote.token_entropies(Reference(), [[1, 2]], [[3, 4]])
    assert len(keys) == 2 and keys[0] != keys[1]


def test_wandb_offline_run_is_named_by_its_directory_and_grouped(tmp_path):
    run_dir = tmp_path / "sweep" / "0"
    run_dir.mkdir(parents=True)
    t = Tracker(run_dir, LoggerConfig(wandb="offline", group=str(tmp_path / "sweep")), {"seed": 0})
    t.log({"reward/total": 1.0}, step=0)
    t.results({"auroc": 0.9}, {"samples": [{"id": "a", "thinking": "x", "steps": [1, 2]}]}, {})
    t.finish()
    where = json.loads((run_dir / "tracking.json").read_text())["wandb"]
    assert where == {"id": run_id(run_dir), "project": "stepentropy_rl", "group": str(tmp_path / "sweep"),
                     "mode": "offline"}
    assert list((run_dir / "wandb").glob(f"offline-run-*-{run_id(run_dir)}"))


def test_wandb_charts_use_the_stage_step(tmp_path, monkeypatch):
    """wandb's own step counter only grows: without a step metric, GRPO's charts began after SFT's last step and the
    steps a resumed run made again were drawn after the run's last row."""
    import wandb

    calls = []

    class Run:
        id = "x"

        def define_metric(self, name, **kw):
            calls.append((name, kw.get("step_metric")))

        def log(self, row):
            calls.append(("log", row["step"]))

    monkeypatch.setattr(wandb, "init", lambda **kw: Run())
    t = Tracker(tmp_path, LoggerConfig(wandb="offline"))
    t.log({"sft/nll": 1.0}, step=3)
    assert calls == [("step", None), ("*", "step"), ("log", 3)]


def test_gauge_names_are_prometheus_names():
    from stepentropy_rl.driver.ray_metrics import EXPORTED, gauge_name

    assert gauge_name("reward/skip_ratio") == "stepentropy_reward_skip_ratio"
    assert gauge_name("perf/tokens_per_s") == "stepentropy_perf_tokens_per_s"
    assert "reward/" in EXPORTED and not "sync/bytes".startswith(EXPORTED)


def test_two_sweeps_job0_are_two_runs_on_the_ray_dashboard(tmp_path, monkeypatch):
    """The gauges were tagged with the directory's name: every sweep's job0 wrote one Prometheus series."""
    from stepentropy_rl.driver import tracking

    seen = []
    monkeypatch.setattr(tracking, "_ray_gauges", lambda run: seen.append(run))
    for sweep in ("a", "b"):
        (tmp_path / sweep / "job0").mkdir(parents=True)
        tracking.Tracker(tmp_path / sweep / "job0")
    assert len(set(seen)) == 2 and all(s.startswith("job0-") for s in seen)
