"""scripts/bench_grpo_step.py measures steps after the warm-up only (no GRPO job runs here)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_grpo_step.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_grpo_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_step_is_refused_and_a_run_with_only_the_warm_up_reports_nothing(tmp_path, monkeypatch):
    """With --steps 1 it printed the warm-up step as "the mean of 1 steps after warm-up"."""
    bench = _bench()

    def never(*a, **k):
        raise AssertionError("the job ran")

    monkeypatch.setattr(bench.subprocess, "run", never)
    monkeypatch.setattr(sys, "argv", ["bench_grpo_step.py", "--steps", "1"])
    with pytest.raises(SystemExit) as refused:
        bench.main()
    assert refused.value.code == 2
    step = {"time/step": 2.0, **{f"time/{p}": 0.1 for p in bench.PARTS}}
    monkeypatch.setattr(bench.tempfile, "mkdtemp", lambda prefix: str(tmp_path))
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, cwd, check: (tmp_path / "metrics.jsonl").write_text(
        json.dumps(step) + "\n"))
    monkeypatch.setattr(sys, "argv", ["bench_grpo_step.py", "--steps", "2", "--out", str(tmp_path / "out.json")])
    with pytest.raises(SystemExit, match="no GRPO step after the warm-up"):
        bench.main()
    assert not (tmp_path / "out.json").exists()
