"""kill -9 anywhere, nothing lost: scripts/kill_harness.py kills the micro main job's driver 10 times across its
stages (inside eval, prune, SFT and a checkpoint write; at random moments of GRPO and of start-up once Ray is up),
reruns the same command each time, and checks what survived; the report must be the one the same command writes
without a kill."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_train_e2e import SMALL

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1800)  # the harness's own limit is 1500 s; pytest's 900 s default cut it on a busy machine
def test_ten_kills_across_every_stage_lose_nothing_and_end_with_the_uninterrupted_report(micro_model, tmp_path):
    out = tmp_path / "harness.json"
    overrides = ["+experiment=entropy_guided", *SMALL, "trainer.grpo.steps=16", "trainer.grpo.save_every=1"]
    proc = subprocess.run([sys.executable, "scripts/kill_harness.py", "--kills", "10", "--seed", "0",
                           "--run-dir", str(tmp_path / "run"), "--reference-run", str(tmp_path / "uninterrupted"),
                           "--out", str(out), "--", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    res = json.loads(out.read_text())
    assert proc.returncode == 0 and not res["violations"], proc.stdout[-4000:] + proc.stderr[-2000:]
    assert res["kills"] >= 10, res["attempts"]
    assert {"eval_base", "prune", "sft", "grpo", "eval_final"} <= set(res["stages_killed"]), res["stages_killed"]
    assert res["grpo_steps"] == list(range(16)) and res["attempts"][-1]["rc"] == 0
    startup = [a["rc"] for a in res["attempts"] if str(a["kill"]).startswith("ray +")]
    assert startup == [-9, -9], res["attempts"]  # each waited for its attempt's Ray to be up, then landed
    assert set(res["report"]) == {"base", "sft", "final"}
    assert res["report_differs_from_uninterrupted"] == {}, res["report_differs_from_uninterrupted"]
