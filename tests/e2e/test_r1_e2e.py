"""The main job on the R1-format stand-in, end to end (Ray, vLLM, FSDP2 learners, real Qwen2 vocabulary, CHAMP
problems, the math grader): ``python -m stepentropy_rl.main +experiment=r1_standin``, with the problems given as
verl's Parquet (chat-message prompts, ``reward_model.ground_truth``) and asked with R1's instruction."""
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
    from datasets import Dataset

    from stepentropy_rl.data import load_problems, to_verl_row

    run_dir, data = tmp_path_factory.mktemp("r1_run"), tmp_path_factory.mktemp("verl_data")
    for split in ("train", "test"):  # the shipped CHAMP files as verl's preprocessing would write them
        rows = [to_verl_row(p, "champ", split, i) for i, p in enumerate(load_problems(ROOT / "data" / f"champ_{split}.jsonl"))]
        Dataset.from_list(rows).to_parquet(str(data / f"{split}.parquet"))
    cmd = [sys.executable, "-m", "stepentropy_rl.main", "+experiment=r1_standin", f"run_dir={run_dir}",
           "cluster.include_dashboard=false", f"data.path={data / 'test.parquet'}",
           f"data.train_path={data / 'train.parquet'}"]
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
    champ = {json.loads(line)["id"]: json.loads(line) for line in (ROOT / "data" / "champ_train.jsonl").open()}
    assert all(r["prompt"] == champ[r["id"]]["prompt"] + "\nPlease reason step by step, and put your final answer "
               "within \\boxed{}." for r in rows)  # read from the Parquet, asked with R1's instruction


def test_grpo_scores_the_full_r1_vocabulary(run):
    """A random model over R1's 152k rows: the SFT loss starts near ln(152064) and the exact full-vocabulary
    entropy of the sampling distribution is close to that (a top-k or sampled-token estimate would be far below)."""
    run_dir, _ = run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sft = [r for r in rows if "sft/nll" in r]
    grpo = [r for r in rows if "policy/entropy" in r]
    assert abs(sft[0]["sft/nll"] - math.log(152064)) < 0.5
    assert len(grpo) == 2 and all(11 < r["policy/entropy"] <= math.log(152064) for r in grpo)
    assert [r["phase/stage_name"] for r in grpo] == ["compress", "explore"]  # both stages' temperature and reward
    assert all(r["response/length"] <= 48 for r in grpo)  # trainer.grpo.max_tokens
