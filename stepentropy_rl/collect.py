"""Merge the jobs of a sweep into one table and two plots.

    python -m stepentropy_rl.collect SWEEP_DIR [--out DIR]

Every directory under ``SWEEP_DIR`` holding a study's ``summary.json`` or a training job's ``report.json`` is a job;
its ``config.yaml`` gives the settings, and the keys whose values differ between the jobs label them (a Hydra
multirun over ``pruning.ratio`` gives ``pruning.ratio=0.4``, ...). Written to ``--out`` (default ``SWEEP_DIR``):
``collected.json`` (every row), ``collected.md`` (the table), ``accuracy_vs_ratio.png`` (study rows) and
``accuracy_vs_tokens.png`` (every row: accuracy against thinking tokens, with its standard error). When the study
jobs differ in nothing but ``pruning.strategy`` and ``pruning.ratio``, their strategies are also compared on the same
problems with a paired standard error (``paired.json``, a second table in ``collected.md``), as one study run does.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import yaml

from stepentropy_rl.config import RUN_ONLY
from stepentropy_rl.cot_stats import compare_strategies
from stepentropy_rl.files import atomic_write_json
from stepentropy_rl.report import paired_table

# differ between jobs by construction (a sweep's wandb group: not in a job rerun alone) and decide no result
IGNORED = ("hydra", *RUN_ONLY)
STUDY_AXES = ("pruning.strategy", "pruning.ratio")  # study jobs differing in these alone answer the same problems


def find_jobs(sweep: Path) -> list[Path]:
    """Job directories under ``sweep`` (itself included), in path order with numbers as numbers (job2 before
    job10)."""
    hits = {p.parent for name in ("summary.json", "report.json") for p in sweep.rglob(name)}
    return sorted(hits, key=_natural)


def _natural(path: Path) -> list:
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", str(path))]


def unfinished(sweep: Path) -> list[Path]:
    """Run directories under ``sweep`` without results: jobs that failed, were killed or still run; left out of the
    table, so the caller names them. A run directory holds a ``config.yaml``, or only Hydra's
    ``.hydra/overrides.yaml`` (a job stopped before it wrote its config: bad data, killed building the model)."""
    done = set(find_jobs(sweep))
    runs = {p.parent for p in sweep.rglob("config.yaml")
            if not {".hydra", "wandb"} & set(p.relative_to(sweep).parts)}  # Hydra's and wandb's own configs
    runs |= {p.parent.parent for p in sweep.rglob(".hydra/overrides.yaml")}
    return sorted(runs - done, key=_natural)


def resume_command(job: Path) -> str | None:
    """The command that finishes one sweep job on its own (its overrides from Hydra's ``.hydra/overrides.yaml`` and
    ``run_dir=`` the job's directory): a rerun of the whole sweep renumbers jobs that a shorter value list leaves out.
    None without Hydra's record."""
    try:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(overrides, list):
        return None
    kept = [str(o) for o in overrides if not str(o).startswith("run_dir=")]
    return " ".join(["python -m stepentropy_rl.main", *map(shlex.quote, kept), shlex.quote(f"run_dir={job.resolve()}")])


def _flat(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


def _configs(jobs: list[Path]) -> dict[Path, dict]:
    return {job: _config(job) for job in jobs}


def _config(job: Path) -> dict:
    """The job's ``config.yaml`` flattened; {} when it is missing or unreadable (one cut short by a kill before it
    was written atomically), so one bad file costs its job's label, not the whole table."""
    try:
        cfg = yaml.safe_load((job / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return _flat(cfg) if isinstance(cfg, dict) else {}


def _varying(configs: dict[Path, dict]) -> list[str]:
    """Config keys set in every job whose values differ between them; every key when one job has no config."""
    if any(not c for c in configs.values()):
        return ["?"]
    keys = set.intersection(*(set(c) for c in configs.values())) if configs else set()
    differ = {k for c in configs.values() for k in c if any(k not in o for o in configs.values())}
    return [k for k in sorted(keys | differ) if not any(k == i or k.startswith(i + ".") for i in IGNORED)
            and len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1]


def labels(jobs: list[Path], sweep: Path, most: int = 4, leave_out: tuple = ()) -> dict[Path, str]:
    """Each job's label: the config keys set in every job whose values differ between them (``key=value``,
    comma-separated), less those in ``leave_out``; the job's directory when there are more than ``most`` (unrelated
    runs) or none (but for ``leave_out``: then '')."""
    configs = _configs(jobs)
    varying = [k for k in _varying(configs) if all(k in c for c in configs.values())]
    if leave_out and len(varying) <= most:
        varying = [k for k in varying if k not in leave_out]
        if not varying:
            return {job: "" for job in jobs}
    if not varying or len(varying) > most:
        return {job: str(job.relative_to(sweep)) if job != sweep else job.name for job in jobs}
    return {job: ", ".join(f"{k}={configs[job][k]}" for k in varying) for job in jobs}


STUDY_KEYS, TRAIN_KEYS = ("strategy", "ratio", "accuracy", "thinking_tokens", "n"), ("accuracy", "thinking_tokens", "n")


def collect(sweep: Path, unreadable: list | None = None) -> list[dict]:
    """One row per (job, strategy, ratio) of a study and per (job, model) of a training report. A job whose results
    cannot be read (a file cut short or edited by hand) is left out and appended to ``unreadable``, with the reason:
    one bad job does not cost the table of the others."""
    jobs = find_jobs(sweep)
    names, series, rows = labels(jobs, sweep), labels(jobs, sweep, leave_out=STUDY_AXES), []
    for job in jobs:
        base = {"job": str(job.relative_to(sweep)) if job != sweep else ".", "label": names[job],
                "series": series[job]}  # the study's lines: one per strategy and per value of the other keys
        try:
            found = []
            if (job / "summary.json").exists():
                found += [{**base, "kind": "study", **_has(r, STUDY_KEYS)}
                          for r in json.loads((job / "summary.json").read_text())["results"]]
            if (job / "report.json").exists():
                models = json.loads((job / "report.json").read_text())["models"]
                found += [{**base, "kind": "train", "model": model, **_has(m, TRAIN_KEYS)}
                          for model, m in models.items()]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            if unreadable is not None:
                unreadable.append((job, f"{type(e).__name__}: {e}"))
            continue
        rows += found
    return rows


def _has(row: dict, keys: tuple) -> dict:
    missing = [k for k in keys if k not in row]
    if missing:
        raise KeyError(f"a result without {', '.join(missing)}")
    return row


def paired(sweep: Path) -> list[dict]:
    """The study jobs' strategies compared on the same problems (``cot_stats.compare_strategies`` over their
    ``samples.jsonl``); [] unless there are two or more such jobs differing only along ``STUDY_AXES``, and, said on
    the console, where two jobs hold the same strategy and ratio (the same study twice: one job's verdicts would
    overwrite the other's)."""
    jobs = [job for job in find_jobs(sweep) if (job / "summary.json").exists() and (job / "samples.jsonl").exists()]
    if len(jobs) < 2 or not set(_varying(_configs(jobs))) <= set(STUDY_AXES):
        return []
    rows, holder = [], {}
    for job in jobs:
        mine = [json.loads(line) for line in (job / "samples.jsonl").read_text().splitlines() if line]
        for cell in dict.fromkeys((r["strategy"], float(r["ratio"])) for r in mine):
            if holder.setdefault(cell, job) != job:
                print(f"not compared on the same problems: {holder[cell].relative_to(sweep)} and "
                      f"{job.relative_to(sweep)} both hold {cell[0]} @ {cell[1]:.2f} (the same study twice?)")
                return []
        rows += mine
    return compare_strategies(rows)


def table(rows: list[dict]) -> str:
    lines = ["| job | what | accuracy | thinking tokens | n |", "|---|---|---|---|---|"]
    for r in rows:
        what = f"{r['strategy']} @ {r['ratio']:.2f}" if r["kind"] == "study" else r["model"]
        err = r.get("accuracy_stderr")
        acc = f"{100 * r['accuracy']:.1f}" + (f" ± {100 * err:.1f}%" if err is not None else "%")
        lines.append(f"| {r['label']} | {what} | {acc} | {r['thinking_tokens']:.1f} | {r['n']} |")
    return "\n".join(lines)


def plots(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    study = [r for r in rows if r["kind"] == "study"]
    if study:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for key in dict.fromkeys((r.get("series", r["label"]), r["strategy"]) for r in study):
            pts = sorted((r["ratio"], 100 * r["accuracy"], 100 * r.get("accuracy_stderr", 0.0)) for r in study
                         if (r.get("series", r["label"]), r["strategy"]) == key)
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=2, label=key[1] + (f" ({key[0]})" if key[0] else ""))
        written.append(_save(fig, ax, "pruning ratio", out / "accuracy_vs_ratio.png"))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label in dict.fromkeys(r["label"] for r in rows):
        sel = [r for r in rows if r["label"] == label]
        ax.errorbar([r["thinking_tokens"] for r in sel], [100 * r["accuracy"] for r in sel],
                    yerr=[100 * r.get("accuracy_stderr", 0.0) for r in sel], fmt="o", capsize=2, label=label)
        for r in sel:
            ax.annotate(r.get("model") or f"{r['strategy']}@{r['ratio']:g}", (r["thinking_tokens"], 100 * r["accuracy"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
    written.append(_save(fig, ax, "thinking tokens (mean)", out / "accuracy_vs_tokens.png"))
    return written


def _save(fig, ax, xlabel: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.set(xlabel=xlabel, ylabel="accuracy (%)", ylim=(-2, 102))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: a sweep has many jobs
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path, help="a sweep (Hydra multirun) directory, or any folder of run directories")
    ap.add_argument("--out", type=Path, default=None, help="where the table and plots go (default: SWEEP)")
    args = ap.parse_args(argv)
    bad: list = []
    rows, missing = collect(args.sweep, bad), unfinished(args.sweep)
    gone = (f"{len(missing)} job{'s' * (len(missing) > 1)} without results (failed, killed or still running; to "
            f"finish one, rerun its command): "
            + "; ".join(f"{p.relative_to(args.sweep)}" + (f" ({cmd})" if (cmd := resume_command(p)) else "")
                        for p in missing)) if missing else ""
    if bad:
        gone = "; ".join([gone] * bool(gone) + [f"{p.relative_to(args.sweep)}: results unreadable ({why}), left out"
                                                 for p, why in bad])
    if not rows:
        raise SystemExit(f"no job under {args.sweep} has a summary.json or report.json" + (f"; {gone}" if gone else ""))
    out = args.out or args.sweep
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "collected.json", rows)
    compared = paired(args.sweep)
    tables = [table(rows)] + ([paired_table(compared)] if compared else []) + ([gone] if gone else [])
    if compared:
        atomic_write_json(out / "paired.json", compared)
    (out / "collected.md").write_text("\n\n".join(tables) + "\n")
    written = plots(rows, out)
    print("\n\n".join(tables))
    print(f"{len({r['job'] for r in rows})} jobs, {len(rows)} rows: {out / 'collected.json'}, "
          + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
