"""The kill harness's timing, without a main job: GRPO kills are placed by the steps the attempt has logged (a
fraction of a step after its k-th step), so a fast machine cannot run past them; a planned kill that never lands is a
violation, not an extra finish."""
import importlib.util
import sys
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kill_harness", ROOT / "scripts" / "kill_harness.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def _line(stamp: str, text: str) -> str:
    return f"[2026-12-04 {stamp}][stepentropy_rl][INFO] - {text}\n"


LOG = (_line("21:00:00,000", "step 7 | nll=0.11 grad_norm=0.3")  # an SFT line: not a GRPO step
       + "bootstrap:  50%|#####     | 1/2\r" + _line("21:00:01,000", "step 3 | stage=0 total=0.31 step=0.2")
       + _line("21:00:01,200", "step 4 | stage=0 total=0.32 step=0.2")
       + _line("21:00:01,600", "step 5 | stage=1 total=1.6 step=0.4"))


def _epoch(stamp: str) -> float:
    return datetime.strptime(f"2026-12-04 {stamp}", "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_grpo_steps_are_read_from_grpos_lines_only():
    assert harness.grpo_steps_logged(LOG) == [3, 4, 5]


@pytest.mark.parametrize("k,frac,due", [(2, 0.5, ("21:00:01,200", 0.1)), (3, 0.25, ("21:00:01,600", 0.1)),
                                        (2, 0.0, ("21:00:01,200", 0.0))])
def test_a_grpo_kill_lands_a_fraction_of_a_step_after_the_attempts_kth_step(k, frac, due):
    assert harness._fire_time(("grpo", (k, frac)), LOG) == pytest.approx(_epoch(due[0]) + due[1])


def test_a_grpo_kill_waits_until_its_kth_step_is_logged():
    assert harness._fire_time(("grpo", (2, 0.5)), LOG.split("step 4")[0]) is None
    assert harness._fire_time(("grpo", (4, 0.5)), LOG) is None


def test_a_startup_kill_counts_from_rays_start():
    assert harness._fire_time(("ray", 3.0), LOG) is None
    due = harness._fire_time(("ray", 3.0), LOG + "INFO worker.py:2029 -- Started a local Ray instance.\n")
    assert due == pytest.approx(time.time() + 3.0, abs=1.0)


def _harness_on_a_stand_in(tmp_path, sleep_s: float, **args) -> dict:
    """The harness around a command that only makes the run directory and sleeps ``sleep_s``, never the moments the
    harness waits for (a kill point, Ray's start, a GRPO step)."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-c", f"import pathlib, time; p = pathlib.Path({str(run_dir)!r}); p.mkdir(exist_ok=True); "
           f"(p / 'metrics.jsonl').touch(); time.sleep({sleep_s})"]
    defaults = dict(run_dir=str(run_dir), seed=0, kills=10, startup_kills=2, startup_window=0.5, timeout=30.0,
                    reference_run=None, out=None)
    return harness.run(SimpleNamespace(**{**defaults, **args}), cmd)


def test_a_planned_kill_that_never_lands_is_a_violation(tmp_path):
    """A command that finishes at once, whatever moment it was to be killed at: every planned kill is named."""
    res = _harness_on_a_stand_in(tmp_path, 0)
    missed = [v for v in res["violations"] if "did not land" in v]
    assert len(missed) == 10 and res["kills"] == 0, res["violations"]
    assert "grpo step" in missed[4] and "exit code 0" in missed[4]


def test_an_attempt_that_hangs_is_a_violation_not_a_kill(tmp_path):
    """Killed at the harness's time limit is not killed at the planned moment: named, and not counted as a kill."""
    res = _harness_on_a_stand_in(tmp_path, 30, kills=5, startup_kills=0, timeout=0.5)
    hung = [v for v in res["violations"] if "still running at the" in v]
    assert len(hung) == 7 and res["kills"] == 0, res["violations"]  # 6 planned kills (4 moments, GRPO, eval) + final
    assert all(a["timed_out"] and a["rc"] == -9 for a in res["attempts"])


def test_grpo_rows_lost_at_the_end_are_a_violation(tmp_path):
    """Each GRPO step once and in order held for a file that had lost its last rows: it now also holds as many rows
    as the finished stage ran."""
    import json

    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "grpo.done").write_text(json.dumps({"steps": 4}))
    rows = [{"step": s, "sft/nll": 1.0} for s in range(2)] + [{"step": s, "phase/stage": 1} for s in range(3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    found, grpo, sft = harness.metrics_violations(tmp_path)
    assert found == ["metrics.jsonl has 3 GRPO steps, and GRPO finished 4: rows were lost"]
    assert grpo == [0, 1, 2] and sft == [0, 1]
    rows.append({"step": 3, "phase/stage": 1})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert harness.metrics_violations(tmp_path)[0] == []


def test_sft_rows_lost_in_the_middle_are_a_violation(tmp_path):
    """SFT rows were checked for repeats only: a rewind that cut rows passed."""
    import json

    rows = [{"step": s, "sft/nll": 1.0} for s in (0, 1, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert harness.metrics_violations(tmp_path)[0] == ["metrics.jsonl SFT steps are not each once in order: [0, 1, 3]"]


def test_an_unfinished_reference_run_is_refused_not_resumed(tmp_path):
    """A reference run killed at the time limit left stages/ behind: the next harness resumed it, and checked the
    killed runs against another killed run."""
    ref = tmp_path / "ref"
    (ref / "stages").mkdir(parents=True)
    with pytest.raises(SystemExit, match="holds a run that did not finish"):
        _harness_on_a_stand_in(tmp_path / "run", 0, kills=0, startup_kills=0, reference_run=str(ref))
