"""kill -9 the main job at random moments and rerun the same command until it finishes; then check what survived.

    python scripts/kill_harness.py --kills 10 --run-dir runs/harness -- +experiment=entropy_guided ...overrides

Each attempt runs the command and the driver gets SIGKILL: at the named moments below (the driver kills itself there,
``STEPENTROPY_DIE_AT``), at a seeded random point of a GRPO step (a seeded fraction of a step's length after the
attempt's second or third step, so that it lands mid-step, mid-sync or mid-checkpoint however fast the machine), or a
seeded random time after the driver's Ray is up (while the engines, the reference and the learners come up). After
the last kill the command runs to the end. Checked: every planned kill landed (a run that got past its moment is a
violation, not a quiet extra finish); every rerun starts, the last one finishes; ``metrics.jsonl`` holds each GRPO
step once, in order, and the SFT rows once; no GRPO step that a checkpoint held was done again; every stage is
marked done and ``report.json`` is whole. With ``--reference-run DIR`` the same command also runs once without a kill
into ``DIR``, and the two reports must be the same (the engines' sampler state is saved with every stage marker and
checkpoint and restored on a rerun). The figures go to ``--out`` (JSON) and the console.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

# moments inside the driver (stepentropy_rl.driver.faults.die_at), in the order the pipeline reaches them: a stage's
# work is done or its files half written, and it is not marked done yet
POINTS = ("eval_done", "prune_written", "sft_saved", "checkpoint_learner_saved")


def _stage(run_dir: Path) -> str:
    """Which stage the run was in: the first not marked done."""
    from stepentropy_rl.driver.train import ORDER

    done = {p.stem for p in (run_dir / "stages").glob("*.done")} if (run_dir / "stages").exists() else set()
    return next((s for s in ORDER if s not in done), "report")


def _latest(run_dir: Path) -> int | None:
    marker = run_dir / "grpo" / "latest"
    return int(marker.read_text().strip().split("_")[1]) if marker.exists() else None


def _attempt(cmd: list[str], log: Path, kill: tuple | None, timeout_s: float) -> dict:
    """One run of ``cmd``. ``kill``: None (run to the end), ``("point", name)`` (the driver kills itself there),
    ``("ray", s)`` (SIGKILL ``s`` seconds after this attempt logs that its Ray is up, so that the kill lands while the
    actors start: the driver alone needs ~10 s on 2 cores to get there) or ``("grpo", (k, u))`` (when this attempt
    has logged ``k`` >= 2 GRPO steps, a fraction ``u`` of its last step's length after the k-th step's log line: the
    kill lands inside step k+1, mid-step, mid-sync or mid-checkpoint, on a fast machine as on a slow one)."""
    env = dict(os.environ, **({"STEPENTROPY_DIE_AT": kill[1]} if kill and kill[0] == "point" else {}))
    start, deadline = time.time(), time.time() + timeout_s
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        fire = None
        while proc.poll() is None and time.time() < deadline:
            if fire is None and kill and kill[0] in ("grpo", "ray"):
                fire = _fire_time(kill, log.read_text(errors="replace"))
            if fire is not None and time.time() >= fire:
                os.kill(proc.pid, signal.SIGKILL)  # the driver, as kill -9 would
                break
            time.sleep(0.02)
        timed_out = proc.poll() is None and fire is None
        if timed_out:
            proc.kill()
        proc.wait()
        try:  # what the dead driver started (its local Ray, the engines) goes with it, as on a crash of its machine
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {"rc": proc.returncode, "seconds": round(time.time() - start, 1), "timed_out": timed_out}


RAY_UP = re.compile(r"Started a local Ray instance|Connected to Ray cluster")
# GRPO's console line, not SFT's, with the time Hydra's log format stamps it: [2026-12-04 20:52:07,477][name][INFO]
# (at a line's start, or after a progress bar's carriage return)
GRPO_LINE = re.compile(r"(?:^|\r)\[([\d-]+ [\d:]+,\d{3})\]\[[^\]]*\]\[INFO\] - step (\d+) \| stage=", re.M)


def grpo_steps_logged(log_text: str) -> list[int]:
    return [int(step) for _, step in GRPO_LINE.findall(log_text)]


def _fire_time(kill: tuple, log_text: str) -> float | None:
    """When a ``ray`` or ``grpo`` kill is due (epoch seconds), or None while its moment has not come in sight."""
    if kill[0] == "ray":
        return time.time() + kill[1] if RAY_UP.search(log_text) else None
    k, frac = kill[1]
    stamps = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp() for t, _ in GRPO_LINE.findall(log_text)]
    return stamps[k - 1] + frac * (stamps[k - 1] - stamps[k - 2]) if len(stamps) >= k else None


def _label(kill: tuple) -> str:
    if kill[0] == "point":
        return kill[1]
    return f"ray +{kill[1]:.1f} s" if kill[0] == "ray" else f"grpo step {kill[1][0]} +{kill[1][1]:.2f}"


def _report(run_dir: Path) -> dict:
    path = run_dir / "report.json"
    return json.loads(path.read_text())["models"] if path.exists() else {}


def metrics_violations(run_dir: Path) -> tuple[list[str], list[int], list[int]]:
    """What is wrong with the run's ``metrics.jsonl`` after every kill and rerun: GRPO's steps each once, in order,
    as many as its finished stage ran (``stages/grpo.done``), and SFT's each once in order; and the two step
    lists."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    grpo = [r["step"] for r in rows if "phase/stage" in r]
    sft = [r["step"] for r in rows if "sft/nll" in r]
    found = []
    if grpo != list(range(len(grpo))):
        found.append(f"metrics.jsonl GRPO steps are not each once in order: {grpo}")
    marker = run_dir / "stages" / "grpo.done"
    ran = json.loads(marker.read_text()).get("steps") if marker.exists() else None
    if ran is not None and len(grpo) != ran:
        found.append(f"metrics.jsonl has {len(grpo)} GRPO steps, and GRPO finished {ran}: rows were lost")
    if sft != list(range(len(sft))):  # a rewind that cut rows lost steps; one that cut none repeated them
        found.append(f"metrics.jsonl SFT steps are not each once in order: {sft}")
    return found, grpo, sft


def run(args, cmd: list[str]) -> dict:
    run_dir = Path(args.run_dir)
    logs = run_dir.parent / f"{run_dir.name}_harness_logs"
    logs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    # in the order the run reaches them: inside eval, prune, SFT and the first checkpoint write; then random moments
    # of GRPO; then inside the final eval; then random moments of start-up (after Ray is up: vLLM, the reference,
    # the reward service and the learners coming up)
    n_grpo = max(1, args.kills - len(POINTS) - 1 - args.startup_kills)
    plan = [("point", p) for p in POINTS] + [("grpo", (rng.choice((2, 3)), rng.random())) for _ in range(n_grpo)]
    plan += [("point", "eval_done")] + [("ray", rng.uniform(0.0, args.startup_window))
                                        for _ in range(args.startup_kills)]
    attempts, violations = [], []
    for i, kill in enumerate([*plan, None]):
        before = {"stage": _stage(run_dir), "checkpoint": _latest(run_dir)}
        res = _attempt(cmd, logs / f"attempt_{i:02d}.log", kill, args.timeout)
        text = (logs / f"attempt_{i:02d}.log").read_text(errors="replace")
        steps = grpo_steps_logged(text)
        if before["checkpoint"] is not None and steps and min(steps) < before["checkpoint"]:
            violations.append(f"attempt {i} redid GRPO step {min(steps)} although step_{before['checkpoint']} "
                              "was checkpointed")
        if (before["stage"] == "grpo" and before["checkpoint"] is None and steps
                and "SFT optimizer state included" not in text):
            violations.append(f"attempt {i} started GRPO without the SFT learners' optimizer state")
        attempts.append({"attempt": i, "kill": kill and _label(kill),
                         "stage_at_start": before["stage"], "stage_at_end": _stage(run_dir), **res,
                         "grpo_steps_run": steps})
        print(json.dumps(attempts[-1]), flush=True)
        if kill is None and res["rc"] != 0:
            violations.append(f"the final rerun failed with exit code {res['rc']} (see {logs})")
        if res["timed_out"]:
            violations.append(f"attempt {i} was still running at the {args.timeout:.0f} s limit: killed there, not at "
                              f"its planned moment (see {logs})")
        elif kill is not None and res["rc"] != -signal.SIGKILL:
            violations.append(f"attempt {i}'s kill ({_label(kill)}) did not land: it ended with exit code {res['rc']} "
                              f"in stage {attempts[-1]['stage_at_end']} (an earlier attempt got further than planned?)")
    found, grpo, sft = metrics_violations(run_dir)
    violations += found
    models = _report(run_dir)
    if set(models) != {"base", "sft", "final"}:
        violations.append("report.json is missing or incomplete")
    differs = None
    if args.reference_run:  # the same command, never killed
        ref_dir = Path(args.reference_run)
        if not (ref_dir / "report.json").exists():
            if (ref_dir / "stages").exists():  # run again, it would resume: a killed run checked against another
                raise SystemExit(f"{ref_dir} holds a run that did not finish (stages/, no report.json): the reference "
                                 f"must run uninterrupted; delete it or name another --reference-run")
            ref = _attempt([c if not c.startswith("run_dir=") else f"run_dir={ref_dir}" for c in cmd],
                           logs / "reference.log", None, args.timeout)
            if ref["rc"] != 0 or ref["timed_out"]:
                violations.append(f"the uninterrupted run failed (exit code {ref['rc']}, timed out: "
                                  f"{ref['timed_out']}; {logs / 'reference.log'})")
        reference = _report(ref_dir)
        differs = {m: {k: [models.get(m, {}).get(k), reference.get(m, {}).get(k)]
                       for k in {*models.get(m, {}), *reference.get(m, {})}
                       if models.get(m, {}).get(k) != reference.get(m, {}).get(k)} for m in ("base", "sft", "final")}
        differs = {m: d for m, d in differs.items() if d}
        if differs or not reference:
            violations.append(f"the report differs from the uninterrupted run's ({ref_dir}): {differs}")
    killed = [a for a in attempts if a["rc"] == -signal.SIGKILL and not a["timed_out"]]
    out = {"kills": len(killed), "attempts": attempts, "grpo_steps": grpo, "sft_rows": len(sft),
           "stages_killed": sorted({a["stage_at_end"] for a in killed}), "report": models,
           "report_differs_from_uninterrupted": differs, "violations": violations}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--startup-kills", type=int, default=2)
    ap.add_argument("--startup-window", type=float, default=15.0,
                    help="start-up kills land up to this many seconds after an attempt's Ray is up")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds any one attempt may run")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--reference-run", default=None,
                    help="also run the command once without a kill into this directory (kept if it has a report) and "
                         "require the same report")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the main job (after --)")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "stepentropy_rl.main", f"run_dir={args.run_dir}", *args.overrides]
    out = run(args, cmd)
    print(f"{out['kills']} kills in stages {out['stages_killed']}; GRPO steps {out['grpo_steps']}; "
          f"violations: {out['violations'] or 'none'}")
    sys.exit(1 if out["violations"] else 0)


if __name__ == "__main__":
    main()
