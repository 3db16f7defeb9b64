"""Run outputs: summary table (console + markdown), summary.json, and the accuracy-vs-ratio plot."""
from __future__ import annotations

import math
from pathlib import Path

from stepentropy_rl.files import atomic_write_json, atomic_write_text


def summary_table(results: list[dict]) -> str:
    """The study's summary rows (strategy, ratio, accuracy, thinking tokens, kept fraction, the share whose thinking
    still writes the answer with the accuracy with / without it, n) as a Markdown table."""
    pct = (lambda v: "-" if v is None else f"{100 * v:.1f}%")
    lines = ["| strategy | ratio | accuracy | thinking tokens | kept | answer in thinking (accuracy with / without) "
             "| n |", "|---|---|---|---|---|---|---|"]
    for r in results:
        err = f" ± {100 * r['accuracy_stderr']:.1f}" if "accuracy_stderr" in r else ""
        answer = (f"{pct(r['answer_in_thinking'])} ({pct(r['accuracy_answer_in_thinking'])} / "
                  f"{pct(r['accuracy_answer_not_in_thinking'])})" if "answer_in_thinking" in r else "-")
        lines.append(f"| {r['strategy']} | {r['ratio']:.2f} | {100 * r['accuracy']:.1f}{err}% | "
                     f"{r['thinking_tokens']:.1f} | {100 * r['kept_fraction']:.1f}% | {answer} | {r['n']} |")
    return "\n".join(lines)


def paired_table(paired: list[dict]) -> str:
    """The study's strategy comparisons (``cot_stats.compare_strategies``) as a Markdown table."""
    lines = ["| ratio | comparison | difference (paired error) | z | ahead beyond error (sign test p) "
             "| right in one only |",
             "|---|---|---|---|---|---|"]
    for r in paired:
        lines.append(f"| {r['ratio']:.2f} | {r['better']} - {r['worse']} | {100 * r['difference']:+.1f} ± "
                     f"{100 * r['stderr']:.1f} | {'-' if r['z'] is None else format(r['z'], '+.1f')} | "
                     f"{'yes' if r['ahead_beyond_error'] else 'no'}"
                     f"{'' if r.get('sign_test_p') is None else format(r['sign_test_p'], '.2g').join((' (', ')'))} | "
                     f"{r['only_better_right']} / {r['only_worse_right']} |")
    return "\n".join(lines)


def write_summary(run_dir: Path, results: list[dict], extra: dict, paired: list[dict] | None = None) -> Path:
    """``summary.md`` of the study (with the strategy comparisons when given), then ``summary.json`` (NaN as null),
    each atomically: the JSON, which says the study finished, comes last; returns its path."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in extra.items()}
    tables = [summary_table(results)] + ([paired_table(paired)] if paired else [])
    atomic_write_text(run_dir / "summary.md", "\n\n".join(tables) + "\n\n" + "\n".join(
        f"- {k}: {v}" for k, v in clean.items()) + "\n")
    path = run_dir / "summary.json"
    atomic_write_json(path, {"results": results, **({"paired": paired} if paired else {}), **clean})
    return path


def plot_accuracy(run_dir: Path, results: list[dict], title: str) -> Path:
    """``accuracy_vs_ratio.png``: accuracy against the pruning ratio, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    styles = {"low": ("tab:green", "o"), "high": ("tab:red", "s"), "random": ("tab:blue", "^")}
    for strategy in dict.fromkeys(r["strategy"] for r in results):
        pts = sorted((r["ratio"], 100 * r["accuracy"]) for r in results if r["strategy"] == strategy)
        color, marker = styles.get(strategy, (None, "x"))
        ax.plot(*zip(*pts), marker=marker, color=color, label=f"{strategy}-entropy" if strategy != "random" else
                "random")
    ax.set_xlabel("pruning ratio (share of steps pruned)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = run_dir / "accuracy_vs_ratio.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def training_table(models: dict) -> str:
    """The training report: accuracy with its standard error, thinking tokens and their share of the base's,
    [SKIP]s, and where the problems have labelled steps the redundant share of the thinking and the CoTs right at
    every step."""
    base = models["base"]
    lines = ["| model | accuracy | thinking tokens | vs. base tokens | redundant tokens | all steps right | "
             "[SKIP] per sample | n |", "|---|---|---|---|---|---|---|---|"]

    def pct(v):
        return "n/a" if v is None or v != v else f"{100 * v:.1f}%"

    for name, m in models.items():
        rel = m["thinking_tokens"] / base["thinking_tokens"] if base["thinking_tokens"] else float("nan")
        err = m.get("accuracy_stderr")
        acc = f"{100 * m['accuracy']:.1f}" + (f" ± {100 * err:.1f}%" if err is not None else "%")
        lines.append(f"| {name} | {acc} | {m['thinking_tokens']:.1f} | {100 * rel:.0f}% | "
                     f"{pct(m.get('redundant_fraction'))} | {pct(m.get('steps_right'))} | {m.get('skips', 0.0):.2f} | "
                     f"{m['n']} |")
    return "\n".join(lines)


REPORT_KEYS = ("accuracy", "accuracy_stderr", "thinking_tokens", "skips", "redundant_fraction", "steps_right",
               "right_by_luck", "mistakes", "mistakes_in_wrong", "n")


def write_training_report(run_dir: Path, models: dict, stage_seconds: dict | None = None) -> dict:
    """``report.json``: ``models: {base, sft, final}``, each with the ``REPORT_KEYS`` its eval measured
    (``driver/evaluate.py``), and ``stage_seconds``, each stage's wall time when it ran; ``report.md`` and the
    console get the table."""
    rep = {"models": {k: {key: v[key] for key in REPORT_KEYS if key in v} for k, v in models.items()},
           "stage_seconds": stage_seconds or {}}
    table = training_table(rep["models"])
    atomic_write_text(run_dir / "report.md", table + "\n")
    atomic_write_json(run_dir / "report.json", rep)  # last, as collect reads it as the job's result
    print(table)
    return rep
