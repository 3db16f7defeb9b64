"""Benchmark one GRPO step's time split: generation, old log-probs + entropy, reference, reward, advantages,
update, weight sync (and its MB/s: the policy streamed from learner rank 0 into every engine). Runs the main job with a few GRPO steps (tiny settings by default) and reads the timings the
trainer logs (``time/*`` in metrics.jsonl); prints and saves the mean over steps after the first (warm-up).

    python scripts/bench_grpo_step.py [--steps 4] [--out runs/bench_grpo_step.json] [hydra overrides ...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("gen", "old_logprob", "ref", "reward", "adv", "update", "sync")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="runs/bench_grpo_step.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error(f"--steps must be at least 2: the first step is a warm-up and is not measured, got {args.steps}")
    run_dir = Path(tempfile.mkdtemp(prefix="bench_grpo_"))
    cmd = [sys.executable, "-m", "stepentropy_rl.main", "+experiment=entropy_guided", f"run_dir={run_dir}",
           f"trainer.grpo.steps={args.steps}", f"trainer.grpo.save_every={args.steps}", "trainer.logger.wandb=disabled",
           "cluster.include_dashboard=false", *args.overrides]
    subprocess.run(cmd, cwd=ROOT, check=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step" in r][1:]
    if not rows:
        raise SystemExit(f"{run_dir / 'metrics.jsonl'}: no GRPO step after the warm-up was logged")
    mean = {p: sum(r[f"time/{p}"] for r in rows) / len(rows) for p in PARTS}
    total = sum(mean.values())
    sync_mb = rows[0].get("sync/bytes", 0) / 2**20
    result = {"steps_measured": len(rows), "samples_per_step": rows[0].get("samples"), "step_s": total,
              "sync_mb": sync_mb, "sync_mb_per_s": sync_mb / mean["sync"] if mean["sync"] else None,
              "split_s": mean, "split_share": {p: v / total for p, v in mean.items()}, "overrides": args.overrides,
              "run_dir": str(run_dir)}
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"GRPO step {total:.2f} s (mean of {len(rows)} steps after warm-up)")
    for p in PARTS:
        print(f"  {p:>12}: {mean[p]:7.3f} s  {100 * mean[p] / total:5.1f}%")
    if result["sync_mb_per_s"]:
        print(f"weight sync: {sync_mb:.1f} MB a push at {result['sync_mb_per_s']:.0f} MB/s, "
              f"{100 * mean['sync'] / total:.1f}% of the step")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
