"""The user's command end to end: a Hydra multirun of the pruning study on the micro reasoner (Ray + vLLM)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MICRO_OVERRIDES

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sweep(micro_model, tmp_path_factory):
    """Two jobs: a list of strategies in one run (one engine), and a single strategy."""
    out = tmp_path_factory.mktemp("sweep")
    cmd = [sys.executable, "-m", "stepentropy_rl.main", "-m", "+experiment=prune_sweep",
           "pruning.strategy=[low,random],high", "pruning.ratio=[0.0,0.5]", "data.n_eval=6",
           "rollout.max_tokens=48", "cluster.include_dashboard=false", f"hydra.sweep.dir={out}", *MICRO_OVERRIDES]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = sorted(p for p in out.iterdir() if (p / "summary.json").exists())
    return proc, jobs


def test_each_job_writes_summary_plot_and_samples(sweep):
    proc, jobs = sweep
    assert len(jobs) == 2
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert isinstance(summary["auroc"], float)
        strategies = {r["strategy"] for r in summary["results"]}
        assert strategies in ({"low", "random"}, {"high"})
        for r in summary["results"]:
            assert set(r) == {"strategy", "ratio", "accuracy", "accuracy_stderr", "thinking_tokens", "kept_fraction",
                              "answer_in_thinking", "accuracy_answer_in_thinking", "accuracy_answer_not_in_thinking",
                              "cot_cut", "answer_cut", "n"}
            assert 0.0 <= r["answer_in_thinking"] <= 1.0 and 0.0 <= r["cot_cut"] <= 1.0 and 0.0 <= r["answer_cut"] <= 1.0
            assert r["n"] == 6 and 0.0 <= r["accuracy"] <= 1.0 and r["ratio"] in (0.0, 0.5)
            assert r["accuracy_stderr"] == pytest.approx((r["accuracy"] * (1 - r["accuracy"]) / 6) ** 0.5)
        samples = [json.loads(line) for line in (job / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 6 * len(strategies) * 2
        assert (job / "accuracy_vs_ratio.png").stat().st_size > 1000
        assert (job / "summary.md").read_text().startswith("| strategy |")
    assert "AUROC" in proc.stdout


def test_the_second_job_reads_the_first_jobs_cots_and_entropies_from_the_cache(sweep):
    """Both jobs ask the same model the same problems from the same engine state: the second writes no CoT and
    scores none (``pruning.cache``), and its full CoTs are the first job's."""
    _, jobs = sweep
    summaries = [json.loads((job / "summary.json").read_text()) for job in jobs]
    assert summaries[1]["cots_cached"] is True
    full = [{r["id"]: r["thinking"] for r in map(json.loads, (job / "samples.jsonl").read_text().splitlines())
             if r["ratio"] == 0.0} for job in jobs]
    assert len(full[0]) == 6 and full[0] == full[1]
    assert summaries[0]["auroc_generated"] == summaries[1]["auroc_generated"]


def test_gold_steps_are_scored_with_labels(sweep):
    _, jobs = sweep
    steps = [json.loads(line) for line in (jobs[0] / "steps.jsonl").read_text().splitlines()]
    gold = [s for s in steps if s["source"] == "gold"]
    assert gold and {s["label"] for s in gold} == {"essential", "redundant"}
    assert all(s["entropy"] >= 0 for s in gold)


def test_the_sweep_is_one_wandb_group_and_collects_into_one_table(sweep):
    proc, jobs = sweep
    out = jobs[0].parent
    tracked = [json.loads((job / "tracking.json").read_text())["wandb"] for job in jobs]
    assert [t["group"] for t in tracked] == [str(out)] * 2 and len({t["id"] for t in tracked}) == 2
    res = subprocess.run([sys.executable, "-m", "stepentropy_rl.collect", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = json.loads((out / "collected.json").read_text())
    assert len(rows) == 3 * 2  # (low, random) x 2 ratios in job 0, high x 2 ratios in job 1
    assert {r["label"] for r in rows} == {'pruning.strategy=["low", "random"]', "pruning.strategy=high"}
    assert (out / "accuracy_vs_ratio.png").exists() and (out / "accuracy_vs_tokens.png").exists()
    # the jobs differ in the strategy alone, so high (job 1) is compared with low and random (job 0) problem by problem
    compared = json.loads((out / "paired.json").read_text())
    assert [(p["better"], p["worse"], p["ratio"]) for p in compared] == [
        ("low", "random", 0.5), ("random", "high", 0.5), ("low", "high", 0.5)]
    summary = {(r["strategy"], r["ratio"]): r for job in jobs
               for r in json.loads((job / "summary.json").read_text())["results"]}
    for p in compared:
        assert p["n"] == summary[(p["better"], 0.5)]["n"] == summary[(p["worse"], 0.5)]["n"]
        assert p["difference"] == pytest.approx(summary[(p["better"], 0.5)]["accuracy"]
                                                - summary[(p["worse"], 0.5)]["accuracy"])


def test_the_viewer_shows_a_study_job_in_chromium(sweep, tmp_path):
    from tests.chromium import Browser, chromium_binary

    _, jobs = sweep
    cots = [json.loads(line) for line in (jobs[0] / "cots.jsonl").read_text().splitlines()]
    assert len(cots) == 6 and all(c["entropy_source"].startswith("exact") for c in cots)
    assert {(v["strategy"], v["ratio"]) for v in cots[0]["variants"]} == {(s, r) for s in ("low", "random")
                                                                          for r in (0.0, 0.5)}
    out = tmp_path / "view.html"
    proc = subprocess.run([sys.executable, "-m", "stepentropy_rl.view", str(jobs[0]), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    chromium_binary()
    with Browser() as b:
        b.open(out.as_uri() + f"#source=0&id={cots[0]['id']}&strategy=low&ratio=0.5")
        low = next(v for v in cots[0]["variants"] if v["strategy"] == "low" and v["ratio"] == 0.5)
        assert b.eval("[...document.querySelectorAll('.step.pruned')].map(e => Number(e.dataset.index))") == low[
            "pruned"]
        assert b.console == []


def test_a_sweep_runs_as_ray_tasks_through_hydra_ray_launcher(micro_model, tmp_path):
    """``hydra/launcher=ray``: the jobs run concurrently as Ray tasks in the launcher's Ray session; each run keeps
    its actors in its own namespace (no name clash), leaves the session up for the other job and releases its
    actors when done."""
    cmd = [sys.executable, "-m", "stepentropy_rl.main", "-m", "+experiment=prune_sweep", "hydra/launcher=ray",
           "pruning.ratio=0.0,0.5", "pruning.strategy=low", "data.n_eval=4", "rollout.max_tokens=32",
           "cluster.include_dashboard=false", "trainer.logger.wandb=disabled", f"hydra.sweep.dir={tmp_path}",
           *MICRO_OVERRIDES]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Ray Launcher is launching 2 jobs" in out and out.count("_run_job pid=") > 0
    for job in ("job0", "job1"):
        assert json.loads((tmp_path / job / "summary.json").read_text())["results"][0]["n"] == 4
