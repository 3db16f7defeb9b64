"""The controller claim, tested: entropy-phase switching vs the paper's fixed schedule vs compress-only vs
explore-only, the same number of GRPO steps, several seeds. One table and one plot of final accuracy against final
thinking tokens (the Pareto front), mean and spread over seeds.

    python scripts/bench_controller.py [--seeds 0 1 2] [--out runs/bench_controller] [hydra overrides ...]

Per seed the first mode runs as a whole job (``seed<N>_entropy``: init, eval base, prune, SFT, eval SFT, GRPO,
eval final); every other mode reruns from a copy of it cut back to before GRPO. So the modes differ only in GRPO, and
each starts from the engines' sampler state that the first run saved when its SFT eval finished (the stage marker
holds it), as a resumed run does: the first mode's own rerun would end with its report (the kill harness checks
that), so it is not run twice. ``seed`` and ``rollout.seed`` take
the seed. Saves ``results.json`` (with the overrides it ran under: a rerun with others, or one whose kept runs' stage
markers record a config its jobs no longer compose to, is refused rather than reporting the old runs as its own),
``table.md`` and ``pareto.png`` under ``--out``.

The table compares the controller (``entropy``) with each other mode per seed and over the seeds: the mean of the
per-seed differences, its standard error over seeds (``seed_difference``: sd / sqrt(k), the error of a difference in
training, but never below what the evaluation's own sampling gives, from the runs' per-problem verdicts), and Student's
t with k - 1 degrees of freedom and its two-sided p (with 3 seeds a difference needs |t| > 4.30 for p < 0.05, not 2).
``--against OTHER/results.json`` compares each mode with the same mode of another bench (e.g.
``trainer.grpo.optimizer=fresh`` against the default).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from stepentropy_rl.cot_stats import paired_difference
from stepentropy_rl.files import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
MODES = ("entropy", "fixed", "compress", "explore")
AFTER_SFT = ("grpo", "models/final", "eval/final.json", "eval/final.cots.jsonl", "stages/grpo.done",
             "stages/eval_final.done", "metrics.jsonl", "tensorboard", "tensorboard.stale", "report.json", "report.md")


def run_mode(run_dir: Path, mode: str, seed: int, overrides: list[str]) -> dict:
    """The job's report; a job that stops (an actor died: exit 1, "run stopped") is rerun once with the same command,
    which resumes it as a user would, and the report counts the restart (``restarts``)."""
    cmd = [sys.executable, "-m", "stepentropy_rl.main", *job_overrides(run_dir, mode, seed, overrides)]
    restarts = 0
    while subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode != 0:
        if restarts:
            raise SystemExit(f"{run_dir}: the job stopped twice; its log is on the console above")
        restarts += 1
        print(f"{run_dir.name}: the job stopped; rerunning the same command to resume it", flush=True)
    return {**json.loads((run_dir / "report.json").read_text())["models"], "restarts": restarts}


def job_overrides(run_dir: Path, mode: str, seed, overrides: list[str]) -> list[str]:
    """The Hydra overrides of one mode's job on one seed."""
    return ["+experiment=entropy_guided", f"run_dir={run_dir}", f"algorithm.phase.mode={mode}", f"seed={seed}",
            f"rollout.seed={seed}", "trainer.logger.wandb=disabled", "cluster.include_dashboard=false", *overrides]


OWN_KEYS = ("run_dir", "algorithm.phase.mode", "seed", "rollout.seed")  # what the bench sets for each run


def refuse_own_keys(overrides: list[str]) -> None:
    """SystemExit for an override of a key the bench sets per run (``job_overrides``): coming last, it won over the
    bench's, so every seed (or every mode) ran one config under three (four) names."""
    from stepentropy_rl.main import override_key

    own = [o for o in overrides if override_key(o) in OWN_KEYS]
    if own:
        raise SystemExit(f"{', '.join(own)}: the bench sets {', '.join(OWN_KEYS)} for each run itself (--seeds, its "
                         f"modes, --out)")


def check_kept_runs(out: Path, results: dict, overrides: list[str]) -> None:
    """SystemExit when a run kept from an earlier bench finished under a config that its job's command no longer
    composes to (a default changed since, e.g. the compress stage's advantage estimator: the overrides and the base
    stay the same), naming the key; its stage markers record the config (``stage_config.conflicts``). A kept run whose
    directory or markers are gone cannot be checked, and is said so."""
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.driver.stage_config import ORDER, conflicts
    from stepentropy_rl.driver.train import run_config, stage_inputs

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for seed, per in results.items():
            for mode in per:
                run_dir = out / f"seed{seed}_{mode}"
                markers = {name: run_dir / "stages" / f"{name}.done" for name in ORDER}
                recorded = {name: json.loads(m.read_text()).get("config") for name, m in markers.items() if m.exists()}
                recorded = {name: c for name, c in recorded.items() if c is not None}
                if not recorded:
                    print(f"warning: {run_dir} has no stage markers, so its result in results.json cannot be checked "
                          f"against this config", flush=True)
                    continue
                cfg = build(compose("config", overrides=job_overrides(run_dir, mode, seed, overrides)),
                            check_paths=False)
                found = conflicts(recorded, run_config(stage_inputs(cfg)))
                if found:  # the earliest stage, and a key it ran with before one added since (as the driver names)
                    stage, key, then, now = min(found, key=lambda f: (ORDER.index(f[0]), f[2] == "(unset)"))
                    n = len({k for _, k, _, _ in found})
                    raise SystemExit(f"{run_dir} finished its stage {stage!r} with {key}={then!r}, and its job now "
                                     f"composes {key}={now!r} (a default changed since; {n} key(s) differ): "
                                     f"a rerun would report it as the new setting's. Use another --out")


def fork_after_sft(src: Path, dst: Path) -> None:
    """``dst``: ``src`` with everything GRPO and the final eval wrote removed, so the rerun resumes at GRPO."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    for rel in AFTER_SFT:
        p = dst / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def summarize(results: dict) -> list[dict]:
    """Per mode, over the seeds of ``results`` that ran it: mean and sd (None for one seed) of final accuracy and
    thinking tokens, and the tokens' share of the base's."""
    rows = []
    for mode in MODES:
        finals = [results[s][mode]["final"] for s in results if mode in results[s]]
        if not finals:
            continue
        acc = [f["accuracy"] for f in finals]
        tok = [f["thinking_tokens"] for f in finals]
        rel = [results[s][mode]["final"]["thinking_tokens"] / results[s][mode]["base"]["thinking_tokens"]
               for s in results if mode in results[s]]
        sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else None)
        rows.append({"mode": mode, "seeds": len(finals), "accuracy": statistics.mean(acc), "accuracy_sd": sd(acc),
                     "thinking_tokens": statistics.mean(tok), "thinking_tokens_sd": sd(tok),
                     "vs_base": statistics.mean(rel)})
    return rows


def seed_difference(a: dict, b: dict, mode_a: str, mode_b: str, eval_se: dict | None = None) -> dict | None:
    """Final accuracy of ``mode_a`` in results ``a`` minus ``mode_b`` in ``b``, on each seed both ran: the
    per-seed differences d, their mean, its standard error over the k seeds, t = mean / error with k - 1 degrees of
    freedom, and t's two-sided p (error, t and p None for one seed). None when no seed ran both.

    Each d_i is training's spread plus the evaluation's sampling error ``eval_se[seed]`` (the paired error over the
    held-out problems), so the error is sqrt(max(sd(d)^2, mean(eval_se^2)) / k): an sd over a few seeds that comes
    out below the evaluation's own error by chance does not make a difference look surer than one evaluation can.
    Where the floor decides, t's k - 1 degrees of freedom make p conservative rather than exact.

    >>> r = {s: {"x": {"final": {"accuracy": x}}, "y": {"final": {"accuracy": y}}}
    ...      for s, x, y in (("0", 0.76, 0.98), ("1", 0.98, 0.98), ("2", 0.99, 0.98))}
    >>> d = seed_difference(r, r, "x", "y"); [round(v, 2) for v in d["per_seed"]], round(d["stderr"], 3), d["df"]
    ([-0.22, 0.0, 0.01], 0.075, 2)
    >>> r = {s: {"x": {"final": {"accuracy": 0.99}}, "y": {"final": {"accuracy": 0.98}}} for s in "012"}
    >>> d = seed_difference(r, r, "x", "y", {s: 0.006 for s in "012"}); round(d["stderr"], 4), round(d["p"], 2)
    (0.0035, 0.1)
    """
    seeds = [s for s in a if s in b and mode_a in a[s] and mode_b in b[s]]
    if not seeds:
        return None
    diffs = [a[s][mode_a]["final"]["accuracy"] - b[s][mode_b]["final"]["accuracy"] for s in seeds]
    k, mean = len(diffs), statistics.mean(diffs)
    out = {"seeds": seeds, "per_seed": diffs, "mean": mean, "stderr": None, "t": None, "df": k - 1, "p": None}
    if k > 1:
        floor = [eval_se[s] ** 2 for s in seeds if eval_se and math.isfinite(eval_se.get(s, math.nan))]
        var = max(statistics.variance(diffs), statistics.mean(floor) if floor else 0.0)
        spread = var > 1e-12  # accuracies are counts over n: differences equal but for float rounding have none
        if spread or abs(mean) < 1e-9:  # one nonzero difference on every seed, no evaluation error: no test
            out["stderr"] = (var / k) ** 0.5 if spread else 0.0
            out["t"] = mean / out["stderr"] if spread else 0.0
            out["p"] = t_two_sided_p(out["t"], k - 1)
    return out


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's T with ``df`` degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2).

    >>> round(t_two_sided_p(4.303, 2), 3), round(t_two_sided_p(1.96, 10**6), 3), t_two_sided_p(0.0, 2)
    (0.05, 0.05, 1.0)
    """
    import mpmath  # sympy's, so torch's: installed wherever the project is

    if math.isinf(t):
        return 0.0
    return float(mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True))


def final_verdicts(run_dir: Path) -> dict | None:
    """Per held-out problem id, whether the run's final model got it right (``eval/final.cots.jsonl``); None when
    the run directory is gone."""
    path = run_dir / "eval" / "final.cots.jsonl"
    if not path.exists():
        return None
    return {r["id"]: bool(r["correct"]) for r in map(json.loads, path.read_text().splitlines())}


def eval_errors(dir_a: Path, dir_b: Path, seeds, mode_a: str, mode_b: str) -> dict:
    """Per seed whose two runs' directories are there: the paired error of their final accuracies' difference over
    the problems both evaluated, the evaluation's sampling alone (``cot_stats.paired_difference``)."""
    out = {}
    for s in seeds:
        va, vb = final_verdicts(dir_a / f"seed{s}_{mode_a}"), final_verdicts(dir_b / f"seed{s}_{mode_b}")
        if va and vb:
            ids = sorted(set(va) & set(vb))
            out[s] = paired_difference([va[i] for i in ids], [vb[i] for i in ids])[1]
    return out


def difference_lines(pairs: list[tuple[str, dict | None]]) -> list[str]:
    """A Markdown table of ``seed_difference`` results, in points."""
    lines = ["| comparison | per seed (points) | mean ± error over seeds | t (degrees of freedom), two-sided p | seeds |",
             "|---|---|---|---|---|"]
    for name, d in pairs:
        if d is None:
            continue
        err = f"{100 * d['stderr']:.1f}" if d["stderr"] is not None else "n/a (one seed)" if len(d["seeds"]) == 1 \
            else "n/a (the same on every seed, no evaluation error)"
        test = "n/a" if d["t"] is None else f"{d['t']:+.1f} ({d['df']}), p = {d['p']:.2f}"
        lines.append(f"| {name} | {' / '.join(f'{100 * v:+.1f}' for v in d['per_seed'])} | "
                     f"{100 * d['mean']:+.1f} ± {err} | {test} | {len(d['seeds'])} |")
    return lines


def base_of(overrides: list[str]) -> str:
    """The base model the job's config resolves to, without building it: ``model.path``, the R1-format stand-in, or
    the tiny reasoner's cache entry (``tiny-KEY``, which moves when a default of its recipe or task does)."""
    import dataclasses

    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.tiny_config import tiny_model_path

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = build(compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", *overrides]),
                    check_paths=False)
    if cfg.model.path:
        return str(Path(cfg.model.path).expanduser())
    tiny = cfg.model.tiny_that_runs()
    return f"standin:{cfg.model.standin}" if tiny is None else tiny_model_path(
        dataclasses.replace(tiny, task=cfg.data.task)).name


def load_results(path: Path, overrides: list[str], base: str | None = None) -> dict:
    """The seeds' results measured so far under ``--out``; SystemExit when they ran under other overrides or, where
    ``base`` is given, on another base (the defaults changed since: a file from before the base was recorded counts
    as another; one from before the overrides were recorded counts as none)."""
    if not path.exists():
        return {}
    results = json.loads(path.read_text())
    ran, ran_on = results.pop("_overrides", []), results.pop("_base", None)
    if results and sorted(ran) != sorted(overrides):
        raise SystemExit(f"{path} holds runs made with the overrides {ran}, not {overrides}: a rerun would report "
                         f"them as its own. Use another --out (or the same overrides to go on with those runs)")
    if results and base is not None and ran_on != base:
        raise SystemExit(f"{path} holds runs made on the base {ran_on or 'of an older version'}, and these overrides "
                         f"now resolve to {base} (a default changed since): a rerun would report them as its own. "
                         f"Use another --out")
    return results


def plot(results: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, r in enumerate(rows):
        color = f"C{i}"
        pts = [results[s][r["mode"]]["final"] for s in results if r["mode"] in results[s]]
        ax.scatter([p["thinking_tokens"] for p in pts], [100 * p["accuracy"] for p in pts], color=color, alpha=0.35)
        ax.errorbar(r["thinking_tokens"], 100 * r["accuracy"], xerr=r["thinking_tokens_sd"] or 0,
                    yerr=100 * (r["accuracy_sd"] or 0), fmt="o", color=color, capsize=3, label=r["mode"])
    base = [results[s][MODES[0]]["base"] for s in results]
    ax.scatter([b["thinking_tokens"] for b in base], [100 * b["accuracy"] for b in base], marker="x", color="k",
               label="base")
    ax.set_xlabel("final thinking tokens (held-out mean)")
    ax.set_ylabel("final accuracy (%)")
    ax.set_title(f"GRPO phase modes, {len(results)} seeds (points: seeds; bars: mean ± sd)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, each a base and four runs")
    ap.add_argument("--out", default="runs/bench_controller", help="folder of the runs, results.json and the plot")
    ap.add_argument("--against", type=Path, default=None,
                    help="another bench's results.json: each mode here minus the same mode there, per seed")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = ap.parse_args(argv)
    refuse_own_keys(args.overrides)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    base = base_of(args.overrides)
    results = load_results(results_path, args.overrides, base)
    check_kept_runs(out, results, args.overrides)
    for seed in args.seeds:
        per = results.setdefault(str(seed), {})
        first = out / f"seed{seed}_{MODES[0]}"
        for mode in MODES:
            if mode in per:
                continue  # a rerun keeps what an earlier run measured
            run_dir = out / f"seed{seed}_{mode}"
            if mode != MODES[0]:
                fork_after_sft(first, run_dir)
            per[mode] = run_mode(run_dir, mode, seed, args.overrides)
            atomic_write_json(results_path, {"_overrides": args.overrides, "_base": base, **results})
            print(f"seed {seed} {mode}: final {100 * per[mode]['final']['accuracy']:.1f}% / "
                  f"{per[mode]['final']['thinking_tokens']:.1f} tokens", flush=True)
    results = {str(s): results[str(s)] for s in args.seeds}  # the seeds asked for, not every seed in the file
    rows = summarize(results)
    sd = (lambda v, scale=1: "n/a" if v is None else f"{scale * v:.1f}")
    lines = ["| mode | seeds | final accuracy (mean ± sd) | final thinking tokens (mean ± sd) | vs. base |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['seeds']} | {100 * r['accuracy']:.1f} ± {sd(r['accuracy_sd'], 100)}% | "
              f"{r['thinking_tokens']:.1f} ± {sd(r['thinking_tokens_sd'])} | {100 * r['vs_base']:.0f}% |" for r in rows]
    pairs = [(f"{MODES[0]} - {m}", seed_difference(results, results, MODES[0], m,
                                                   eval_errors(out, out, results, MODES[0], m))) for m in MODES[1:]]
    if args.against is not None:
        other = load_results(args.against, json.loads(args.against.read_text()).get("_overrides", []))
        recorded = json.loads(args.against.read_text())
        theirs, now = recorded.get("_base"), base_of(recorded.get("_overrides", []))
        if theirs != now:  # a default moved since: the difference would be read as the overrides' effect
            raise SystemExit(f"{args.against} ran on the base {theirs or 'of an older version'}, and its overrides now "
                             f"resolve to {now} (a default changed since): its modes differ from these by more than "
                             f"the overrides")
        pairs += [(f"{m} - {m} of {args.against.parent.name}",
                   seed_difference(results, other, m, m, eval_errors(out, args.against.parent, results, m, m)))
                  for m in MODES]
    lines += ["", *difference_lines(pairs)]
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    plot(results, rows, out / "pareto.png")
    print("\n".join(lines))
    print(f"saved {out / 'results.json'}, {out / 'table.md'}, {out / 'pareto.png'}")


if __name__ == "__main__":
    main()
