"""The main job end to end on the micro reasoner: its rollout engine, reference and reward service killed -9 during
GRPO (each restarted by Ray, the step retried), then a learner rank (the run stops), then the same command again: it
resumes, never redoing a stage.

GRPO starts in the explore stage, whose reward has a format term that the micro reasoner earns on about half of its
responses (``</think>`` then a boxed answer within 96 tokens): groups have reward spread, so advantages and the policy
loss are not zero.
"""
import ipaddress
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch

from tests.conftest import MICRO_OVERRIDES

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]
# the micro mechanics: gold SFT rows kept unchecked (the micro model answers nothing), a few SFT and GRPO steps
SMALL = ["data.n_eval=8", "trainer.n_train=16", "trainer.sft.epochs=1", "trainer.sft.batch_size=8",
         "trainer.sft.min_steps=0", "trainer.prune.keep_verified=false", "trainer.prune.source=gold",
         "trainer.prune.keep_essential=false", "algorithm.prompts_per_step=4", "algorithm.n_samples=2",
         "trainer.grpo.steps=4", "trainer.grpo.save_every=2", "trainer.grpo.max_tokens=96",
         "trainer.eval.max_tokens=96", "algorithm.phase.start=explore", "rollout.max_tokens=48",
         "cluster.include_dashboard=false", "trainer.logger.wandb=disabled", "trainer.micro_batch_size=4",
         "cluster.learner.autocast_bf16=false",  # fp32 as the reference: the KL at GRPO's first step is exactly 0
         *MICRO_OVERRIDES]


@pytest.fixture(scope="module")
def killed_then_resumed(micro_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train")
    first = _watched(run_dir, "+trainer.grpo.kill_at_step.rollout=1", "+trainer.grpo.kill_at_step.reference=1",
                     "+trainer.grpo.kill_at_step.reward=2", "+trainer.grpo.kill_at_step.learner=3")
    assert first.returncode != 0
    # the vLLM rollout actor killed before step 1 was restarted by Ray, re-synced, and step 1 retried
    assert "rollout engine 0 died" in first.stdout
    # the reference (before step 1) and the reward service (before step 2) were killed -9; Ray restarted each and the
    # step's call was retried, so the run went on until learner rank 1 was killed before step 3
    for role, step in (("reference", 1), ("reward", 2)):
        assert f"fault injection: killed the {role} before step {step}" in first.stdout
    marks = {p.name: p.stat().st_mtime_ns for p in (run_dir / "stages").iterdir()}
    first.checkpoints = sorted(p.name for p in (run_dir / "grpo").glob("step_*"))
    second = _watched(run_dir, "cluster.include_dashboard=true", "trainer.progress=true")
    assert second.returncode == 0, second.stdout[-6000:]
    second.first = first
    return run_dir, marks, second


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)


def _watched(run_dir, *extra):
    """The main job, while every listening socket of its process tree is recorded, its dashboard is asked for data
    without Ray's token, and its Prometheus metrics are read: ``(returncode, stdout, sockets {(ip, port): process},
    dashboard HTTP status, {gauge: last value} of the run's stepentropy_* gauges)``."""
    cmd = [sys.executable, "-m", "stepentropy_rl.main", "+experiment=entropy_guided", f"run_dir={run_dir}",
           *SMALL, *extra]
    log_path = run_dir.parent / f"{run_dir.name}_watched.log"
    sockets, status, gauges, scraped = {}, None, {}, 0.0
    env = dict(os.environ, RAY_metrics_report_interval_ms="1000")  # export each second, not every ten
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        root, deadline = psutil.Process(proc.pid), time.time() + 900
        while proc.poll() is None and time.time() < deadline:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = []
            for p in tree:
                try:
                    for c in p.net_connections(kind="inet"):
                        if c.status == psutil.CONN_LISTEN:
                            sockets.setdefault((c.laddr.ip, c.laddr.port), p.name())
                except psutil.Error:
                    pass
            url = re.search(r"Ray dashboard: (http://\S+)", log_path.read_text())
            if status is None and url:
                try:
                    status = urllib.request.urlopen(url.group(1) + "/api/version", timeout=10).status
                except urllib.error.HTTPError as e:
                    status = e.code
                except OSError:
                    pass
            metrics = re.search(r"Ray metrics: (http://\S+)", log_path.read_text())
            if metrics and time.time() - scraped > 1.0:
                scraped = time.time()
                try:
                    text = urllib.request.urlopen(metrics.group(1), timeout=5).read().decode()
                    for m in re.finditer(r"^(\w*stepentropy_\w+)\{[^}]*\} (\S+)$", text, re.M):
                        gauges[m.group(1)] = float(m.group(2))
                except OSError:
                    pass
            time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
    return SimpleNamespace(returncode=proc.wait(), stdout=log_path.read_text(), sockets=sockets, dashboard=status,
                           gauges=gauges)


def test_a_local_run_listens_on_loopback_only_and_its_dashboard_wants_the_token(killed_then_resumed):
    """Ray (GCS, raylet, agents, every worker), vLLM, the learners' process group and the weight-sync group: every
    listening socket of the run is on a loopback address; the dashboard answers 401 without Ray's token."""
    _, _, run = killed_then_resumed
    names = set(run.sockets.values())
    assert "gcs_server" in names and "raylet" in names and any("Learner" in n for n in names), names
    open_ = {k: v for k, v in run.sockets.items() if not _is_loopback(k[0])}
    assert not open_, f"listening beyond loopback: {open_}"
    assert run.dashboard == 401


def test_the_run_moves_on_the_ray_dashboards_metrics(killed_then_resumed):
    """The run's step, stage, SFT loss, reward, entropy, thinking tokens and throughput are Ray gauges, read from the
    node's Prometheus endpoint while the first run went (SFT, then GRPO until a learner died)."""
    _, _, second = killed_then_resumed
    seen = {k.split("stepentropy_", 1)[1]: v for k, v in second.first.gauges.items()}
    assert {"step", "sft_nll", "phase_stage", "reward_total", "policy_entropy", "response_think_tokens",
            "perf_tokens_per_s"} <= set(seen), sorted(seen)
    assert seen["step"] >= 1 and seen["perf_tokens_per_s"] > 0


def test_the_console_carries_no_vllm_info_lines(killed_then_resumed):
    """rollout.log_level (WARNING by default) quiets vLLM's per-request and per-weight-load INFO lines, which Ray
    forwards from the engines to the driver's console."""
    _, _, second = killed_then_resumed
    vllm_info = [line for line in second.stdout.splitlines() if re.search(r"\bINFO \d\d-\d\d [\d:]+ \[\w+\.py:\d+\]", line)]
    assert not vllm_info, vllm_info[:5]
    assert "RotaryEmbedding: Failed to load weights" not in second.stdout  # vLLM's false alarm on every reload
    assert "eval final: accuracy" in second.stdout  # the project's own INFO lines stay


def test_resume_continues_from_last_checkpoint(killed_then_resumed):
    run_dir, _, _ = killed_then_resumed
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "phase/stage" in line]
    # killed after step 2 was logged, past the checkpoint of 2 steps (save_every=2): the rerun redid step 2 and its
    # row was logged once
    assert steps == [0, 1, 2, 3]


def test_finished_stages_are_not_redone(killed_then_resumed):
    run_dir, marks, _ = killed_then_resumed
    for name in ("init.done", "eval_base.done", "prune.done", "sft.done", "eval_sft.done"):
        assert (run_dir / "stages" / name).stat().st_mtime_ns == marks[name], name


def test_report_has_base_sft_final(killed_then_resumed):
    run_dir, _, second = killed_then_resumed
    report = json.loads((run_dir / "report.json").read_text())
    for name in ("base", "sft", "final"):
        m = report["models"][name]
        assert m["n"] == 8 and 0 <= m["accuracy"] <= 1 and m["thinking_tokens"] >= 0 and m["skips"] >= 0
        assert m["accuracy_stderr"] == pytest.approx((m["accuracy"] * (1 - m["accuracy"]) / 8) ** 0.5)
        # the embedded task's labelled steps: how much thinking is redundant, how many CoTs are right at every step
        assert 0 <= m["redundant_fraction"] <= 1 and 0 <= m["right_by_luck"] <= m["accuracy"]
        assert m["steps_right"] + m["right_by_luck"] >= m["accuracy"] - 1e-9
        assert sum(m["mistakes"].values()) == round((1 - m["steps_right"]) * 8)  # each wrong CoT: its first mistake
        wrong = sum(m["mistakes_in_wrong"].values())  # the first mistakes of the CoTs whose answer is wrong
        assert wrong <= round((1 - m["accuracy"]) * 8) and wrong <= sum(m["mistakes"].values())
    assert "| final |" in second.stdout
    # each stage's wall time as it ran, the killed GRPO's included: the split of point 7 in issue 8
    assert list(report["stage_seconds"]) == ["init", "eval_base", "prune", "sft", "eval_sft", "grpo", "eval_final"]
    assert all(s >= 0 for s in report["stage_seconds"].values()) and report["stage_seconds"]["sft"] > 0
    for key in ("reward/total", "reward/format_reward", "reward/exp_length", "policy/entropy", "phase/stage",
                "time/gen", "time/update", "time/sync"):
        assert key in (run_dir / "metrics.jsonl").read_text(), key


def test_grpo_steps_earn_rewards_and_move_the_policy(killed_then_resumed):
    run_dir, _, _ = killed_then_resumed
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "phase/stage" in line]
    assert all(s["phase/stage"] == 1 for s in steps)  # explore: correctness + format + length shaping
    assert max(s["reward/format_reward"] for s in steps) > 0 and max(s["reward/total"] for s in steps) > 0
    assert any(abs(s["actor/pg_loss"]) > 1e-6 for s in steps)  # non-zero advantages reached the loss
    assert all(0 <= s["reward/format_reward"] <= 0.2 and s["response/length"] <= 96 for s in steps)


def test_kl_reference_is_the_policy_grpo_starts_from(killed_then_resumed):
    """algorithm.kl_reference=sft (default): at the first GRPO step policy and reference are the same SFT model, so
    the KL term is 0; against the pre-SFT base (the old behaviour) it would not be."""
    run_dir, _, _ = killed_then_resumed
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "phase/stage" in line]
    assert abs(steps[0]["actor/kl_loss"]) < 1e-6 and max(abs(s["actor/kl_loss"]) for s in steps) > 0


def test_a_dead_learner_stops_the_run_with_one_line_and_the_rerun_resumes(killed_then_resumed):
    """Learner rank 1 killed -9 before GRPO step 3 (steps 0-2 done, the checkpoint of steps 0-1 kept): the run stops
    naming it, without a traceback and without a stage marked done that was not; the same command then resumes from
    that checkpoint and finishes (``test_resume_continues_from_last_checkpoint``)."""
    run_dir, marks, second = killed_then_resumed
    first = second.first
    assert "fault injection: killed the learner before step 3" in first.stdout
    after = first.stdout.split("fault injection: killed the learner before step 3", 1)[1]
    assert "run stopped: learner rank 1 of 2 died during" in after, after[-3000:]
    assert "Traceback" not in after, after[-3000:]
    assert "grpo.done" not in marks and "eval_final.done" not in marks
    assert first.checkpoints == ["step_2"] and second.returncode == 0


def test_export_writes_a_model_card_and_the_checkpoint_weights(killed_then_resumed, tmp_path):
    """``stepentropy_rl.export``: the last GRPO checkpoint's shards hold the final model's weights; a rotated-away
    step or an existing output is one clear line."""
    from safetensors.torch import load_file

    run_dir, _, _ = killed_then_resumed
    last = max(int(p.name.split("_")[1]) for p in (run_dir / "grpo").glob("step_*"))
    for args in ([str(tmp_path / "final")], [str(tmp_path / "ckpt"), "--step", str(last)]):
        res = subprocess.run([sys.executable, "-m", "stepentropy_rl.export", str(run_dir), *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
    final, ckpt = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("final", "ckpt"))
    assert set(ckpt) <= set(final) and all(torch.equal(final[k], ckpt[k]) for k in ckpt)
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert "`[SKIP]` is one added token" in card and "--reasoning-parser deepseek_r1" in card and "| final |" in card
    for args, msg in (([str(tmp_path / "x"), "--step", "0"], "no GRPO checkpoint for step 0 (kept: ["),
                      ([str(tmp_path / "final")], "exists; give a new directory")):
        res = subprocess.run([sys.executable, "-m", "stepentropy_rl.export", str(run_dir), *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode != 0 and msg in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_the_export_serves_chat_requests_with_vllms_openai_server(killed_then_resumed, tmp_path):
    """The README's recipe: vLLM's OpenAI server (module form, which the CPU build runs) with R1's reasoning parser
    answers a chat request on the exported model."""
    import json as _json
    import socket

    run_dir, _, _ = killed_then_resumed
    out = tmp_path / "served"
    subprocess.run([sys.executable, "-m", "stepentropy_rl.export", str(run_dir), str(out)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_LEVEL="WARNING")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(out), "--served-model-name",
           "served", "--reasoning-parser", "deepseek_r1", "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", "512"]
    log = tmp_path / "server.log"
    with log.open("w") as f:
        server = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and server.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                time.sleep(2)
        assert server.poll() is None, log.read_text()[-3000:]
        body = _json.dumps({"model": "served", "max_tokens": 64, "temperature": 0,
                            "messages": [{"role": "user", "content": "A basket has 2 pears. Put in: Ann 4, Lea 1. "
                                          "How many pears are in the basket at the end?"}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
        message = _json.loads(urllib.request.urlopen(req, timeout=120).read())["choices"][0]["message"]
        thinking = message.get("reasoning_content") or message.get("reasoning")
        assert thinking, message  # the parser split the thinking off
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_each_eval_saves_its_cots_and_the_viewer_shows_them(killed_then_resumed, tmp_path):
    """The evals' CoTs carry the evaluated policy's token entropies from vLLM's top-k log-probs, the labels of the
    embedded task and the verdicts the report counts; the viewer's page loads them in Chromium."""
    from tests.chromium import Browser, chromium_binary

    run_dir, _, _ = killed_then_resumed
    report = json.loads((run_dir / "report.json").read_text())
    for name in ("base", "sft", "final"):
        cots = [json.loads(line) for line in (run_dir / "eval" / f"{name}.cots.jsonl").read_text().splitlines()]
        assert len(cots) == 8 and sum(c["correct"] for c in cots) / 8 == report["models"][name]["accuracy"]
        assert all(c["entropy_source"].startswith("vLLM top-") for c in cots)
        assert any(t[2] > 0 for c in cots for t in c["tokens"])
        steps = [s for c in cots for s in c["steps"]]
        assert steps and all(s["entropy"] >= 0 for s in steps)
        assert sum(c["mistake"] is None for c in cots) / 8 == pytest.approx(report["models"][name]["steps_right"])
    out = tmp_path / "view.html"
    proc = subprocess.run([sys.executable, "-m", "stepentropy_rl.view", str(run_dir), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    chromium_binary()
    with Browser() as b:
        b.open(out.as_uri() + "#source=2")
        assert b.eval("document.getElementById('source').selectedOptions[0].textContent") == "eval: final (8)"
        assert b.eval("document.querySelectorAll('#steps .step').length") > 0 and b.console == []


def test_progress_bars_with_eta_and_no_worker_bars(killed_then_resumed):
    """``trainer.progress=true`` (auto turns them on at a terminal): the driver draws generation and GRPO bars with
    elapsed<remaining; the actors' own Hugging Face bars (one line per weight load) are gone."""
    _, _, second = killed_then_resumed
    out = second.stdout.replace("\r", "\n")
    for desc, unit in (("generating", "sample"), ("GRPO", "step")):
        assert re.search(rf"{desc}: +\d+%\|.*\| \d+/\d+ \[\d\d:\d\d<\d\d:\d\d, .*({unit}/s|s/{unit})\]", out), desc
    # the resumed run starts its GRPO bar where the checkpoint left off, not at 0
    assert re.search(r"GRPO: +50%\|.*\| 2/4 \[", out) and not re.search(r"GRPO: +0%\|.*\| 0/4 ", out)
    assert "Loading weights" not in out and "Writing model shards" not in out


def test_stages_redone_as_the_refusal_says_log_each_step_once(killed_then_resumed):
    """A changed trainer.prune.ratio is refused with "delete stages/prune.done and the markers after it ... (and move
    grpo aside)". Done so, the old run's SFT and GRPO rows stayed in metrics.jsonl before the new ones (the prune stage
    recorded the old file's size as where SFT starts), and its report.json stood as the new config's until the end.
    Runs last: it retrains the run the tests above read."""
    run_dir, _, _ = killed_then_resumed
    for name in ("prune", "sft", "eval_sft", "grpo", "eval_final"):
        (run_dir / "stages" / f"{name}.done").unlink()
    (run_dir / "grpo").rename(run_dir.parent / f"{run_dir.name}_grpo.old")
    redo = _watched(run_dir, "trainer.prune.ratio=0.4")
    assert redo.returncode == 0, redo.stdout[-6000:]
    assert "report.json is of another config than this job's; removed" in redo.stdout  # before config.yaml is new
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    grpo = [r["step"] for r in rows if "phase/stage" in r]
    sft = [r["step"] for r in rows if any(k.startswith("sft/") for k in r)]
    assert grpo == [0, 1, 2, 3] and sft == list(range(len(sft))) and sft, (sft, grpo)
    assert len(rows) == len(sft) + len(grpo)
    assert json.loads((run_dir / "prune" / "stats.json").read_text())["kept"] > 0
