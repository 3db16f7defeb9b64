"""python -m stepentropy_rl.collect: a sweep's jobs merged into one table and two plots, labelled by what differs."""
import json

import pytest
import yaml

from stepentropy_rl.collect import main


def job(path, ratio, summary=None, report=None):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"run_dir": str(path), "seed": 0,
                                                      "pruning": {"ratio": ratio, "strategy": "low"}}))
    if summary:
        (path / "summary.json").write_text(json.dumps({"results": summary, "auroc": 0.9}))
    if report:
        (path / "report.json").write_text(json.dumps({"models": report}))


def row(ratio, acc):
    return {"strategy": "low", "ratio": ratio, "n": 100, "accuracy": acc, "accuracy_stderr": 0.04,
            "thinking_tokens": 100 * (1 - ratio), "kept_fraction": 1 - ratio}


def test_a_sweep_becomes_one_table_and_two_plots(tmp_path, capsys):
    sweep = tmp_path / "multirun" / "2026-12-01" / "10-00-00"
    job(sweep / "0", 0.2, summary=[row(0.2, 0.9)])
    job(sweep / "1", 0.6, summary=[row(0.6, 0.5)])
    job(sweep / "2", 0.6, report={"base": {"accuracy": 0.95, "accuracy_stderr": 0.01, "thinking_tokens": 160.0, "n": 500},
                                  "final": {"accuracy": 0.96, "accuracy_stderr": 0.01, "thinking_tokens": 62.0, "n": 500}})
    (sweep / "3").mkdir()  # a job that died before writing anything
    job(sweep / "4", 0.8)  # a job that failed or still runs: its config, no results
    (sweep / "4" / ".hydra").mkdir()
    (sweep / "4" / ".hydra" / "config.yaml").write_text("{}")  # Hydra's own copy is not a job
    main([str(sweep)])
    rows = json.loads((sweep / "collected.json").read_text())
    assert [(r["job"], r["kind"], r.get("model", r.get("ratio"))) for r in rows] == [
        ("0", "study", 0.2), ("1", "study", 0.6), ("2", "train", "base"), ("2", "train", "final")]
    assert {r["label"] for r in rows} == {"pruning.ratio=0.2", "pruning.ratio=0.6"}
    md = (sweep / "collected.md").read_text()
    assert "| pruning.ratio=0.6 | final | 96.0 ± 1.0% | 62.0 | 500 |" in md
    for png in ("accuracy_vs_ratio.png", "accuracy_vs_tokens.png"):
        assert (sweep / png).stat().st_size > 5000
    out = capsys.readouterr().out
    assert "3 jobs, 4 rows" in out
    assert "1 job without results (failed, killed or still running; to finish one, rerun its command): 4" in out
    assert out.count("): 4\n") == 1 and "4 without" not in md and "): 4" in md  # named once, in the table file too


def study_job(path, strategy, verdicts, seed=0):
    """A study job of one strategy at ratio 0.5 whose samples give ``verdicts`` on problems p0, p1, ..."""
    job(path, 0.5, summary=[{**row(0.5, sum(verdicts) / len(verdicts)), "strategy": strategy}])
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    cfg["pruning"]["strategy"], cfg["seed"] = strategy, seed
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (path / "samples.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "strategy": strategy, "ratio": 0.5,
                                                            "correct": c}) + "\n" for i, c in enumerate(verdicts)))


def test_study_jobs_that_differ_in_strategy_alone_are_compared_on_the_same_problems(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    study_job(sweep / "0", "low", [True] * 10)
    study_job(sweep / "1", "high", [True] * 4 + [False] * 6)
    study_job(sweep / "2", "random", [True] * 5 + [False] * 5)
    main([str(sweep)])
    got = json.loads((sweep / "paired.json").read_text())
    assert [(p["better"], p["worse"], p["difference"], p["n"]) for p in got] == [
        ("low", "random", 0.5, 10), ("random", "high", 0.1, 10), ("low", "high", 0.6, 10)]
    assert not got[0]["ahead_beyond_error"] and got[2]["ahead_beyond_error"]  # 5 / 0: sign test p 0.0625; 6 / 0
    md = (sweep / "collected.md").read_text()
    assert "| 0.50 | low - random | +50.0 ± 16.7 | +3.0 | no (0.062) | 5 / 0 |" in md
    assert "low - random" in capsys.readouterr().out


def test_study_jobs_that_differ_in_more_are_not_paired(tmp_path):
    sweep = tmp_path / "sweep"
    study_job(sweep / "0", "low", [True] * 10)
    study_job(sweep / "1", "high", [False] * 10, seed=1)  # another seed: other CoTs, other answers
    main([str(sweep)])
    assert not (sweep / "paired.json").exists() and "comparison" not in (sweep / "collected.md").read_text()


def test_the_same_study_twice_is_not_paired_as_one(tmp_path, capsys):
    """Two jobs holding the same strategy and ratio (a study collected twice) had one's verdicts overwrite the
    other's, so the comparison paired one job's answers with another's as if they were one study."""
    sweep = tmp_path / "sweep"
    study_job(sweep / "0", "low", [True] * 10)
    study_job(sweep / "1", "high", [True] * 4 + [False] * 6)
    study_job(sweep / "2", "low", [False] * 10)
    main([str(sweep)])
    assert not (sweep / "paired.json").exists()
    assert "not compared on the same problems: 0 and 2 both hold low @ 0.50" in capsys.readouterr().out


def test_a_job_with_unreadable_results_is_named_and_the_others_tabled(tmp_path, capsys):
    """A summary cut short, or a row without its ratio, raised and lost every other job's table."""
    job(tmp_path / "0", 0.2, summary=[row(0.2, 0.9)])
    job(tmp_path / "1", 0.6)
    (tmp_path / "1" / "summary.json").write_text('{"results": [{"strategy": "lo')
    job(tmp_path / "2", 0.8, summary=[{k: v for k, v in row(0.8, 0.5).items() if k != "ratio"}])
    main([str(tmp_path)])
    rows = json.loads((tmp_path / "collected.json").read_text())
    assert [r["job"] for r in rows] == ["0"]
    out = capsys.readouterr().out
    assert "1: results unreadable (JSONDecodeError" in out and "2: results unreadable (KeyError" in out


def test_a_job_whose_config_was_cut_short_does_not_cost_the_table(tmp_path):
    """A config.yaml cut short by a kill (before it was written atomically) raised a YAMLError out of collect."""
    job(tmp_path / "0", 0.2, summary=[row(0.2, 0.9)])
    job(tmp_path / "1", 0.6, summary=[row(0.6, 0.7)])
    (tmp_path / "1" / "config.yaml").write_text("pruning: {ratio: [0.6")
    main([str(tmp_path)])
    rows = json.loads((tmp_path / "collected.json").read_text())
    assert [r["job"] for r in rows] == ["0", "1"]


def test_an_empty_folder_is_one_clear_line(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="no job under .* has a summary.json or report.json"):
        main([str(tmp_path)])


def test_a_study_sweep_plots_one_line_per_strategy_and_orders_jobs_by_number(tmp_path, monkeypatch):
    """The README's sweep (strategy x ratio, one job each) drew 12 one-point series, its legend's colours repeating,
    and listed job10 before job2."""
    import matplotlib.axes

    sweep = tmp_path / "sweep"
    n = 0
    for strategy in ("low", "high", "random"):
        for ratio in (0.2, 0.4, 0.6, 0.8):
            job(sweep / f"job{n}", ratio, summary=[{**row(ratio, 0.9 - ratio / 2), "strategy": strategy}])
            cfg = yaml.safe_load((sweep / f"job{n}" / "config.yaml").read_text())
            cfg["pruning"]["strategy"] = strategy
            (sweep / f"job{n}" / "config.yaml").write_text(yaml.safe_dump(cfg))
            n += 1
    drawn = []
    real = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(x)))
        return real(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    main([str(sweep)])
    rows = json.loads((sweep / "collected.json").read_text())
    assert [r["job"] for r in rows] == [f"job{i}" for i in range(12)]
    lines = [d for d in drawn if len(d[1]) > 1 or d[0] in ("low", "high", "random")][:3]
    assert lines == [(s, [0.2, 0.4, 0.6, 0.8]) for s in ("low", "high", "random")]


def test_the_config_files_of_hydra_and_wandb_inside_a_job_are_no_jobs(tmp_path):
    """wandb online writes wandb/run-*/files/config.yaml in the run directory: each was listed as a job without
    results."""
    from stepentropy_rl.collect import unfinished

    job(tmp_path / "0", 0.4, summary=[row(0.4, 0.9)])
    for inner in ("wandb/run-20261206_2200-abc/files", ".hydra"):
        (tmp_path / "0" / inner).mkdir(parents=True)
        (tmp_path / "0" / inner / "config.yaml").write_text("x: 1\n")
    assert unfinished(tmp_path) == []


def test_a_job_stopped_before_its_config_is_named_with_the_command_that_finishes_it(tmp_path, capsys):
    """A sweep job stopped on bad data, or killed while the tiny reasoner was built, wrote no config.yaml (only
    Hydra's .hydra/overrides.yaml): it was in neither the table nor the list of jobs without results. Each unfinished
    job now comes with its own command (a rerun of the whole sweep with fewer values renumbers the jobs)."""
    from stepentropy_rl.collect import unfinished

    job(tmp_path / "job0", 0.4, summary=[row(0.4, 0.9)])
    (tmp_path / "job0" / ".hydra").mkdir()
    (tmp_path / "job0" / ".hydra" / "overrides.yaml").write_text("- +experiment=prune_sweep\n- pruning.ratio=0.4\n")
    for name in ("job1", "job2"):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(
            f"- +experiment=prune_sweep\n- pruning.ratio=0.{name[-1]}\n- pruning.placeholder=\n- seed=${{x}} y\n")
    (tmp_path / "job2" / "config.yaml").write_text("pruning: {ratio: 0.2}\n")  # killed after its config
    assert unfinished(tmp_path) == [tmp_path / "job1", tmp_path / "job2"]
    main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "2 jobs without results" in out
    assert (f"job1 (python -m stepentropy_rl.main +experiment=prune_sweep pruning.ratio=0.1 pruning.placeholder= "
            f"'seed=${{x}} y' run_dir={(tmp_path / 'job1').resolve()})") in out  # quoted for the shell


def test_a_rerun_under_another_config_clears_the_old_results_before_it_writes_its_config(tmp_path):
    """A study rerun in its directory with another ratio that then failed left the old ratio's summary.json beside
    the new config.yaml, and collect listed the old figures under the new ratio as a finished job."""
    from stepentropy_rl.collect import unfinished
    from stepentropy_rl.driver.run import clear_results_of_another_config

    job(tmp_path / "s", 0.8, summary=[row(0.8, 0.95)])
    (tmp_path / "s" / "report.md").write_text("old")
    same = (tmp_path / "s" / "config.yaml").read_text()
    clear_results_of_another_config(tmp_path / "s", same)  # a resume of the same config keeps them
    assert (tmp_path / "s" / "summary.json").exists()
    clear_results_of_another_config(tmp_path / "s", same.replace("0.8", "0.4"))
    assert not (tmp_path / "s" / "summary.json").exists() and not (tmp_path / "s" / "report.md").exists()
    assert unfinished(tmp_path) == [tmp_path / "s"]
    clear_results_of_another_config(tmp_path / "new", "seed: 0\n")  # a fresh directory: nothing to clear


def test_prepare_clears_another_configs_results_before_it_writes_its_config(tmp_path, monkeypatch):
    """The order is what matters: a job that dies right after writing its config.yaml must not leave the old figures
    under it."""
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.driver import run
    from tests.unit.test_config import CONF

    run_dir = tmp_path / "s"
    job(run_dir, 0.8, summary=[row(0.8, 0.95)])
    seen = []
    monkeypatch.setattr(run, "resolve_model", lambda cfg: "model")
    monkeypatch.setattr(run, "load_tokenizer", lambda path: None)
    monkeypatch.setattr(run, "fit_context", lambda cfg, path, tok, problems, what: problems)
    write = run.atomic_write_text
    monkeypatch.setattr(run, "atomic_write_text", lambda path, text: (
        seen.append((path.name, (run_dir / "summary.json").exists())), write(path, text)))
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = build(compose("config", overrides=["+experiment=prune_sweep", f"run_dir={run_dir}", "data.n_eval=4"]))
    run.prepare(cfg, run.pipeline_for(cfg)).lock.release()
    assert seen == [("config.yaml", False)]


def test_a_resumed_study_sweep_skips_its_finished_jobs_before_ray_starts(tmp_path, monkeypatch):
    """A study job never looked for its own results: rerunning a half-finished sweep (the way to finish it) started
    Ray and the engines and redid every finished job. A finished one (summary.json under this config) is skipped."""
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.driver import roles, run
    from tests.unit.test_config import CONF

    run_dir = tmp_path / "s"
    monkeypatch.setattr(run, "resolve_model", lambda cfg: "model")
    monkeypatch.setattr(run, "load_tokenizer", lambda path: None)
    monkeypatch.setattr(run, "fit_context", lambda cfg, path, tok, problems, what: problems)
    started = []
    monkeypatch.setattr(roles, "init_ray", lambda *a, **k: started.append(1) or (_ for _ in ()).throw(RuntimeError))
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = build(compose("config", overrides=["+experiment=prune_sweep", f"run_dir={run_dir}", "data.n_eval=4"]))
    with pytest.raises(RuntimeError):  # not finished: on to Ray
        run.run(cfg)
    assert started == [1]
    (run_dir / "summary.json").write_text(json.dumps({"results": [row(0.8, 0.9)]}))
    run.run(cfg)  # finished under this config: nothing starts
    assert started == [1]
    with initialize_config_dir(config_dir=CONF, version_base=None):
        other = build(compose("config", overrides=["+experiment=prune_sweep", f"run_dir={run_dir}", "data.n_eval=5"]))
    with pytest.raises(RuntimeError):  # another config's results are removed, and the job runs
        run.run(other)
    assert started == [1, 1] and not (run_dir / "summary.json").exists()


def test_a_sweep_job_rerun_alone_keeps_its_results_and_its_pairing(tmp_path):
    """A sweep's jobs log to the sweep's wandb group; one rerun alone (collect's advice) records none. That made the
    group a key the jobs differed in: the strategies went unpaired and the rerun cleared the job's finished study."""
    from stepentropy_rl.collect import labels
    from stepentropy_rl.driver.run import clear_results_of_another_config

    sweep = tmp_path / "sweep"
    for name, strategy, verdicts in (("0", "low", [True] * 10), ("1", "high", [True] * 4 + [False] * 6)):
        study_job(sweep / name, strategy, verdicts)
        cfg = yaml.safe_load((sweep / name / "config.yaml").read_text())
        cfg["trainer"] = {"logger": {"group": str(sweep)}, "grpo": {"keep_last": 2}}
        (sweep / name / "config.yaml").write_text(yaml.safe_dump(cfg))
    alone = yaml.safe_load((sweep / "1" / "config.yaml").read_text())
    alone["trainer"]["logger"]["group"] = None
    clear_results_of_another_config(sweep / "1", yaml.safe_dump(alone))
    assert (sweep / "1" / "summary.json").exists()
    (sweep / "1" / "config.yaml").write_text(yaml.safe_dump(alone))
    main([str(sweep)])
    assert json.loads((sweep / "paired.json").read_text())[0]["difference"] == pytest.approx(0.6)
    assert set(labels([sweep / "0", sweep / "1"], sweep).values()) == {"pruning.strategy=low", "pruning.strategy=high"}
    alone["pruning"]["ratio"] = 0.7  # a result key still counts
    clear_results_of_another_config(sweep / "1", yaml.safe_dump(alone))
    assert not (sweep / "1" / "summary.json").exists()
