"""The phase controller against noise: how often its decisions pass the hysteresis, and how often its phases run past
their minimum length, when the entropy it is fed has no trend at all (a flat level plus the step-to-step noise that a
real run measured). Compare with the run's own figures to see whether its schedule followed a trend.

    python scripts/controller_noise.py RUN_DIR/metrics.jsonl [--runs 300] [--steps 40] [algorithm.phase keys as k=v]

The noise is the sd of the run's per-step policy entropy about a line fitted to each of its phases, pooled over the
compress and explore stages (each samples at its own temperature, so each has its own level; the fit takes it out).
It also prints each phase's own trend, the slope of that line with its standard error: on a single-stage run
(``algorithm.phase.mode=compress`` or ``explore``) the one phase is the whole run, the trend a stage gives the
controller to follow when nothing cuts it short.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import replace
from pathlib import Path

from stepentropy_rl.phase import COMPRESS, STAGES, PhaseConfig, PhaseController, slope


def phase_cuts(stage: list) -> list[int]:
    """Where each phase of a per-step stage list starts, and its end: ``[0, ..., len(stage)]``."""
    return [0] + [i for i in range(1, len(stage)) if stage[i] != stage[i - 1]] + [len(stage)]


def phase_trends(entropy: list[float], stage: list) -> list[dict]:
    """Per phase of at least 3 steps: its stage, first step, length, the least-squares slope of its entropy
    (nats/step), the residuals' sum of squares ``rss`` about that line and the slope's standard error,
    sqrt(rss / (n - 2) / sum (i - mean)^2)."""
    cuts, out = phase_cuts(stage), []
    for a, b in zip(cuts, cuts[1:]):
        ys, n = entropy[a:b], b - a
        if n < 3:
            continue
        m, xm = slope(ys), (n - 1) / 2
        c = statistics.mean(ys) - m * xm
        sxx = sum((i - xm) ** 2 for i in range(n))
        rss = sum((y - c - m * i) ** 2 for i, y in enumerate(ys))
        out.append({"stage": stage[a], "start": a, "steps": n, "slope": m, "rss": rss,
                    "stderr": (rss / (n - 2) / sxx) ** 0.5})
    return out


def phase_noise(entropy: list[float], stage: list[int]) -> tuple[list[int], float]:
    """The run's phase lengths and the sd of its entropy about each phase's least-squares line (each line costs two
    degrees of freedom; phases under 3 steps are left out)."""
    fits, cuts = phase_trends(entropy, stage), phase_cuts(stage)
    dof = sum(f["steps"] - 2 for f in fits)
    sd = (sum(f["rss"] for f in fits) / dof) ** 0.5 if dof > 0 else float("nan")
    return [b - a for a, b in zip(cuts, cuts[1:])], sd


def keeps_going(stage: str, trend: float, cfg: PhaseConfig) -> bool:
    """Whether ``trend`` passed the hysteresis the way that keeps ``stage`` going: under the stall rule the entropy
    falling in the compress stage (rising in the explore stage) by more than it; under the reverse rule not rising
    (falling) by more than it."""
    h = cfg.hysteresis
    if cfg.switch_on == "stall":
        return trend < -h if stage == COMPRESS else trend > h
    return trend <= h if stage == COMPRESS else trend >= -h


def run_figures(history: list[dict], lengths: list[int], cfg: PhaseConfig) -> dict:
    """Decisions (steps with a trend) whose |trend| passed the hysteresis, those that passed it the way that keeps
    the phase going (``keeps_going``; a trend past it the other way is a reason to switch), and finished phases (all
    but the last) longer than the controller's minimum."""
    decided = [h for h in history if h["trend"] is not None]
    shortest = max(cfg.min_steps, cfg.window + cfg.patience - 1)
    done = lengths[:-1]
    return {"beyond": sum(abs(h["trend"]) > cfg.hysteresis for h in decided),
            "kept": sum(keeps_going(h["stage"], h["trend"], cfg) for h in decided), "decisions": len(decided),
            "longer": sum(n > shortest for n in done), "phases": len(done)}


def simulate(sd: float, cfg: PhaseConfig, runs: int, steps: int, seed: int = 0) -> dict:
    """``run_figures`` summed over ``runs`` controllers fed a flat entropy plus N(0, sd) noise for ``steps`` steps."""
    rng, total = random.Random(seed), {"beyond": 0, "kept": 0, "decisions": 0, "longer": 0, "phases": 0}
    for _ in range(runs):
        c, stages = PhaseController(replace(cfg, mode="entropy")), []
        for step in range(steps):
            stages.append(c.stage)
            c.update(0.15 + rng.gauss(0.0, sd), step)
        cuts = phase_cuts(stages)
        for k, v in run_figures(c.history, [b - a for a, b in zip(cuts, cuts[1:])], cfg).items():
            total[k] += v
    return total


def _value(text: str):
    """A command-line value: a number or boolean as JSON reads it, else the text (``start=explore``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_phase(config: Path) -> dict:
    """The run's own ``algorithm.phase`` settings from the ``config.yaml`` beside its metrics ({} without one): the run
    was decided by them, and the noise is fed to the same controller (the command line's k=v still win)."""
    import dataclasses

    import yaml

    if not config.exists():
        return {}
    phase = ((yaml.safe_load(config.read_text()) or {}).get("algorithm") or {}).get("phase") or {}
    known = {f.name for f in dataclasses.fields(PhaseConfig)}
    return {k: v for k, v in phase.items() if k in known}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("metrics")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("phase", nargs="*", help="algorithm.phase keys as key=value (window=8 ...)")
    args = ap.parse_args(argv)
    cfg = PhaseConfig(**{**run_phase(Path(args.metrics).parent / "config.yaml"),
                         **{k: _value(v) for k, v in (kv.split("=", 1) for kv in args.phase)}})
    rows = [json.loads(line) for line in open(args.metrics) if "phase/stage" in line]
    entropy, stage = [r["policy/entropy"] for r in rows], [r["phase/stage"] for r in rows]
    lengths, sd = phase_noise(entropy, stage)
    trends = [{"trend": r["phase/trend"] if r["phase/trend"] == r["phase/trend"] else None,
               "stage": STAGES[r["phase/stage"]]} for r in rows]
    real = run_figures(trends, lengths, cfg)
    sim = simulate(sd, cfg, args.runs, args.steps)
    share = (lambda d, a, b: f"{d[a]}/{d[b]} = {d[a] / d[b]:.0%}" if d[b] else "n/a")
    print(f"run: {len(rows)} steps, phases {lengths}, noise sd {sd:.4f} nats about each phase's line")
    print(f"run:   beyond the hysteresis {share(real, 'beyond', 'decisions')} of decisions (the way that keeps the "
          f"phase going {share(real, 'kept', 'decisions')}), finished phases past the minimum "
          f"{share(real, 'longer', 'phases')}")
    for t in phase_trends(entropy, stage):
        print(f"phase from step {t['start']} ({t['steps']} steps, stage {t['stage']}): trend {t['slope']:+.5f} "
              f"± {t['stderr']:.5f} nats/step (hysteresis {cfg.hysteresis})")
    print(f"noise: beyond the hysteresis {share(sim, 'beyond', 'decisions')} (the way that keeps the phase going "
          f"{share(sim, 'kept', 'decisions')}), finished phases past the minimum "
          f"{share(sim, 'longer', 'phases')} ({args.runs} flat runs of {args.steps} steps, sd {sd:.4f})")


if __name__ == "__main__":
    main()
