"""The main job on the R1-format stand-in, end to end (Ray, vLLM, FSDP2 learners, real Qwen2 vocabulary, CHAMP
problems, the math grader): ``python -m stepentropy_rl.main +experiment=r1_standin``."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(r1_standin, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("r1_run")
    cmd = [sys.executable, "-m", "stepentropy_rl.main", "+experiment=r1_standin", f"run_dir={run_dir}",
           "cluster.include_dashboard=false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir, proc


def test_every_stage_runs_and_reports(run):
    run_dir, proc = run
    assert {p.name for p in (run_dir / "stages").iterdir()} == {
        f"{s}.done" for s in ("init", "eval_base", "prune", "sft", "eval_sft", "grpo", "eval_final")}
    report = json.loads((run_dir / "report.json").read_text())["models"]
    assert set(report) == {"base", "sft", "final"} and all(m["n"] == 4 for m in report.values())
    assert all("redundant_fraction" not in m for m in report.values())  # CHAMP has no step labels to measure it
    assert "| final |" in proc.stdout


def test_sft_data_are_pruned_reference_solutions(run):
    run_dir, _ = run
    rows = [json.loads(line) for line in (run_dir / "prune" / "sft_data.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["n_pruned"] == r["n_steps"] // 2 for r in rows)  # ratio 0.5
    assert all("[SKIP]" in r["response"] and "\n</think>\n\nThe answer is \\boxed{" in r["response"] for r in rows)


def test_grpo_scores_the_full_r1_vocabulary(run):
    """A random model over R1's 152k rows: the SFT loss starts near ln(152064) and the exact full-vocabulary
    entropy of the sampling distribution is close to that (a top-k or sampled-token estimate would be far below)."""
    run_dir, _ = run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sft = [r for r in rows if "sft/nll" in r]
    grpo = [r for r in rows if "policy/entropy" in r]
    assert abs(sft[0]["sft/nll"] - math.log(152064)) < 0.5
    assert len(grpo) == 2 and all(11 < r["policy/entropy"] <= math.log(152064) for r in grpo)
    assert all(r["response/length"] <= 48 for r in grpo)  # trainer.grpo.max_tokens
