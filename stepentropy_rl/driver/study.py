"""The static pruning study (step-entropy paper, Fig. 1a): prune steps of the model's own CoTs, regenerate the answer.

1. the rollout worker writes a full CoT for each held-out problem;
2. the reference worker scores exact token entropies; steps are cut on the delimiter and scored (sum or mean);
3. for each strategy and ratio the thinking is pruned, the answer regenerated after the pruned thinking and
   ``</think>`` (the kept steps in the ids the model wrote, ``pruning.answer_prefixer``; the paper appends ``\\n\\n``
   too, which the model writes itself here) and graded. A sample that fails in any way (no CoT, a CoT cut before
   ``</think>``, no answer, garbage) counts as wrong, never dropped;
4. the AUROC with which low step entropy finds the labelled redundant steps, on the gold solutions (teacher-forced).

Each pruned CoT also records whether its kept thinking still writes the gold answer (``answer_in_thinking``): a
model can copy the answer from a step that restates it, so a strategy that keeps such a step looks harmless
whatever else it pruned. The summary splits accuracy by it.
"""
from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass, field

from stepentropy_rl.config import as_list
from stepentropy_rl.driver import register_pipeline
from stepentropy_rl.cot_format import THINK_CLOSE, answer_prefix
from stepentropy_rl.cot_cache import CoTCache, with_topk_entropy, written
from stepentropy_rl.cot_stats import auroc, binomial_stderr, compare_strategies
from stepentropy_rl.cot_record import cot_record, step_texts
from stepentropy_rl.entropy import scored_steps
from stepentropy_rl.pruning import answer_prefixer, prune_steps
from stepentropy_rl.driver.remote import token_entropies
from stepentropy_rl.driver.evaluate import labelled
from stepentropy_rl.tasks.basket import label_step
from stepentropy_rl.tokenizer import count_tokens, encode, prompt_text

log = logging.getLogger(__name__)
SAMPLES_LOGGED = 200  # rows of the study's samples table sent to the trackers (samples.jsonl has them all)


@dataclass
class StudyResult:
    rows: list  # per-problem, per (strategy, ratio)
    summary: list  # {strategy, ratio, accuracy, thinking_tokens, kept_fraction, n}
    steps: list  # per step: {id, index, entropy, label, kind, source}
    cots: list  # per problem: cot_record + {id, prompt, answer, correct, variants: [{strategy, ratio, pruned, ...}]}
    auroc: float
    auroc_generated: float
    topk_error: dict  # error of the top-k entropy estimate against the exact entropy
    cots_cached: bool = False  # the CoTs and their entropies came from an earlier job's (cot_cache)
    paired: list = field(default_factory=list)  # strategies against each other on the same CoTs (compare_strategies)


def topk_error(cots: list[dict], entropies: list[list[float]], k: int) -> dict:
    """Mean absolute and relative error (nats) of vLLM top-k entropy (``cot["topk_entropy"]``) against the exact
    full-vocabulary entropy."""
    exact, approx = [], []
    for c, e in zip(cots, entropies):
        if c.get("topk_entropy"):
            approx += c["topk_entropy"]
            exact += e
    if not exact:
        return {}
    err = sum(abs(a - e) for a, e in zip(approx, exact))
    return {"k": k, "tokens": len(exact), "mae_nats": err / len(exact), "relative": err / max(1e-12, sum(exact)),
            "mean_exact_nats": sum(exact) / len(exact)}


def run_study(cfg, problems, rollout, reference, tokenizer, grade, cache=None) -> StudyResult:
    """``rollout``: a ``RolloutGroup`` (or anything with its ``generate``); ``reference``: the actor (``score``);
    ``cache``: a ``cot_cache.CoTCache`` the CoTs and their entropies are read from or written to."""
    pc, rc = cfg.pruning, cfg.rollout
    strategies = as_list(pc.strategy)
    ratios = [float(r) for r in as_list(pc.ratio)]
    prompts = [prompt_text(tokenizer, p) for p in problems]
    prompt_ids = [encode(tokenizer, p) for p in prompts]  # the one tokenization: engines get ids, never text

    log.info("generating %d CoTs", len(problems))
    cot_sampling = dict(temperature=rc.temperature, top_p=rc.top_p, max_tokens=rc.max_tokens,
                        skip_special_tokens=False, logprobs=rc.topk_logprobs or None)
    got = written(cache, rollout, prompt_ids, cot_sampling, with_topk_entropy)
    cots = got.cots
    log.info("scoring token entropies")
    entropies = got.entropies(list(range(len(cots))), lambda idx: token_entropies(
        reference, [prompt_ids[i] for i in idx], [cots[i]["token_ids"] for i in idx], cfg.reference.batch_size,
        cfg.reference.chunk_rows))

    rows, variants, steps, records = [], [], [], []
    labeler = label_step if labelled(problems) else None  # the task's grammar reads the task's CoTs, no one else's
    placeholder = encode(tokenizer, pc.placeholder) if pc.placeholder else None
    for p, prompt, pids, cot, ent in zip(problems, prompts, prompt_ids, cots, entropies):
        rec = cot_record(tokenizer, cot["token_ids"], ent, pc.delimiter, pc.aggregate, labeler)
        prefix = answer_prefixer(tokenizer, pids, cot["token_ids"], pc.delimiter, placeholder, pc.merge_runs)
        texts, ents = step_texts(rec), [s["entropy"] for s in rec["steps"]]
        n_think = count_tokens(tokenizer, pc.delimiter.join(texts))  # counted like the pruned thinking below
        steps += [{"id": p.id, "index": j, "entropy": s["entropy"], "label": s["label"], "kind": s["kind"],
                   "source": "generated"} for j, s in enumerate(rec["steps"])]
        full_ok = grade(cot["text"], p.answer)
        records.append({"id": p.id, "prompt": p.prompt, "answer": p.answer, "correct": full_ok,
                        "finish_reason": cot["finish_reason"], "entropy_source": "exact (reference model)",
                        **rec, "variants": []})
        for strategy in strategies:
            for ratio in ratios:
                pruned = prune_steps(texts, ents, strategy, ratio, placeholder=pc.placeholder or None,
                                     protect_first=pc.protect_first, protect_last=pc.protect_last,
                                     merge_runs=pc.merge_runs, seed=zlib.crc32(f"{pc.seed}/{p.id}".encode()))
                thinking = pruned.text(pc.delimiter)
                # the kept steps in the ids the model wrote, as the prune stage builds its rows (pruning.pruned_ids)
                variants.append(tuple(prefix(pruned.pruned) if prefix else encode(tokenizer,
                                                                                   answer_prefix(prompt, thinking))))
                rows.append({"id": p.id, "strategy": strategy, "ratio": ratio, "answer": p.answer,
                             "full_cot_correct": full_ok, "finish_reason": cot["finish_reason"],
                             "cot_closed": rec["closed"],
                             "n_steps": len(texts), "n_pruned": pruned.n_pruned,
                             "thinking_tokens_full": n_think,
                             "thinking_tokens": count_tokens(tokenizer, thinking),
                             "answer_in_thinking": writes_answer(thinking, p.answer), "thinking": thinking})
                records[-1]["variants"].append({"strategy": strategy, "ratio": ratio, "thinking_tokens":
                                                rows[-1]["thinking_tokens"],
                                                "pruned": [i for i, f in enumerate(pruned.pruned) if f]})

    # Strategies that prune the same steps (every strategy at ratio 0, or when floor(kappa * N) = 0) give the same
    # prefix: it is answered once, so they are scored on the same sample.
    unique = list(dict.fromkeys(variants))
    log.info("regenerating %d answers after pruned thinking (%d distinct)", len(variants), len(unique))
    ans_sampling = dict(temperature=rc.answer_temperature, top_p=rc.top_p, max_tokens=rc.answer_max_tokens,
                        skip_special_tokens=False)
    by_prefix = dict(zip(unique, rollout.generate([list(u) for u in unique], ans_sampling)))
    shown = [v for rec in records for v in rec["variants"]]  # in the order of ``rows``
    for row, a, view in zip(rows, (by_prefix[v] for v in variants), shown):
        text = a[0]["text"] if a else ""
        row["regenerated"] = view["regenerated"] = text
        row["answer_finish_reason"] = a[0].get("finish_reason") if a else None
        # the regenerated text is what follows </think> after the pruned thinking; a CoT that never closed its
        # thinking (cut at max_tokens) failed, however an answer forced after it comes out
        row["correct"] = view["correct"] = row["cot_closed"] and bool(text) and grade(THINK_CLOSE + text, row["answer"])

    summary = summarize(rows, strategies, ratios)
    warn_cut(summary, rc.max_tokens, rc.answer_max_tokens)
    paired = compare_strategies(rows)
    gold = gold_step_entropies(cfg, problems, reference, tokenizer)
    steps += gold
    return StudyResult(rows=rows, summary=summary, steps=steps, cots=records, cots_cached=got.hit, paired=paired,
                       topk_error=topk_error(cots, entropies, rc.topk_logprobs),
                       auroc=auroc_known(gold),
                       auroc_generated=auroc_known([s for s in steps if s["source"] == "generated"]))


def auroc_known(steps) -> float:
    """AUROC of low step entropy for the label "redundant" over the steps labelled essential or redundant; a step
    without a label, or labelled anything else, is left out (counted as essential it would pull the AUROC down)."""
    known = [s for s in steps if s["label"] in ("essential", "redundant")]
    return auroc([s["entropy"] for s in known], [s["label"] == "redundant" for s in known])


def writes_answer(thinking: str, answer: str) -> bool:
    """Whether ``thinking`` writes ``answer`` as a whole ("11" in "the basket has 11 now", not in "111" or "2.11")."""
    answer = answer.strip()
    return bool(answer) and re.search(rf"(?<![\w.]){re.escape(answer)}(?![\w]|\.\d)", thinking) is not None


def _share_right(rows: list[dict]):
    return sum(r["correct"] for r in rows) / len(rows) if rows else None


def summarize(rows: list[dict], strategies: list[str], ratios: list[float]) -> list[dict]:
    """Per strategy and ratio: accuracy (with its standard error), thinking tokens, the kept share of them, the share
    of pruned CoTs whose thinking still writes the answer and the accuracy with and without it (None: no such CoT)."""
    out = []
    for strategy in strategies:
        for ratio in ratios:
            sel = [r for r in rows if r["strategy"] == strategy and r["ratio"] == ratio]
            full, n = sum(r["thinking_tokens_full"] for r in sel), max(1, len(sel))
            acc = sum(r["correct"] for r in sel) / n
            with_answer = [r for r in sel if r["answer_in_thinking"]]
            out.append({"strategy": strategy, "ratio": ratio, "n": len(sel), "accuracy": acc,
                        "accuracy_stderr": binomial_stderr(acc, len(sel)),
                        "thinking_tokens": sum(r["thinking_tokens"] for r in sel) / n,
                        "kept_fraction": sum(r["thinking_tokens"] for r in sel) / max(1, full),
                        "answer_in_thinking": len(with_answer) / n,
                        "accuracy_answer_in_thinking": _share_right(with_answer),
                        "accuracy_answer_not_in_thinking": _share_right([r for r in sel if not r["answer_in_thinking"]]),
                        "cot_cut": sum(r["finish_reason"] == "length" and not r["cot_closed"] for r in sel) / n,
                        "answer_cut": sum(r.get("answer_finish_reason") == "length" and not r["correct"]
                                          for r in sel) / n})
    return out


def warn_cut(summary: list[dict], max_tokens: int, answer_max_tokens: int, limit: float = 0.02) -> list[str]:
    """Warn (and return the warnings) where more than ``limit`` of the CoTs ran out of ``rollout.max_tokens`` before
    ``</think>`` (``cot_cut``) or of a cell's regenerated answers out of ``rollout.answer_max_tokens`` and were graded
    wrong (``answer_cut``): a budget too small for the model (R1 thinks for thousands of tokens, and answers with a
    solution) reads as a pruning effect. A CoT or answer cut after it was right is not counted."""
    said = []
    cot = max((r["cot_cut"] for r in summary), default=0.0)
    if cot > limit:
        said.append(f"{cot:.1%} of the CoTs ran out of rollout.max_tokens={max_tokens} before </think>; they count "
                    f"as wrong at every strategy and ratio: raise rollout.max_tokens")
    worst = max(summary, key=lambda r: r["answer_cut"], default=None)
    if worst is not None and worst["answer_cut"] > limit:
        said.append(f"{worst['answer_cut']:.1%} of the answers regenerated after {worst['strategy']} pruning at "
                    f"{worst['ratio']:g} ran out of rollout.answer_max_tokens={answer_max_tokens} and count as "
                    f"wrong: raise rollout.answer_max_tokens (summary.json answer_cut, per strategy and ratio)")
    for s in said:
        log.warning(s)
    return said


def gold_step_entropies(cfg, problems, reference, tokenizer) -> list[dict]:
    """Teacher-force the labelled gold solutions; one record per step whose segmentation matches the labels."""
    labelled = [p for p in problems if p.solution and p.steps]
    if not labelled:
        return []
    prompt_ids = [encode(tokenizer, prompt_text(tokenizer, p)) for p in labelled]
    resp_ids = [encode(tokenizer, p.solution) for p in labelled]
    entropies = token_entropies(reference, prompt_ids, resp_ids, cfg.reference.batch_size, cfg.reference.chunk_rows)
    out = []
    for p, ids, ent in zip(labelled, resp_ids, entropies):
        texts, ents = scored_steps(tokenizer, ids, ent, cfg.pruning.delimiter, cfg.pruning.aggregate)
        if len(texts) != len(p.steps):
            log.warning("%s: %d segments vs %d labelled steps; skipped for AUROC", p.id, len(texts), len(p.steps))
            continue
        out += [{"id": p.id, "index": j, "entropy": e, "label": s.get("label"), "kind": s.get("kind"),
                 "source": "gold"} for j, (e, s) in enumerate(zip(ents, p.steps))]
    return out


def placeholder_caveat(cfg) -> str | None:
    """What a study of the embedded tiny reasoner with a placeholder measures: it never saw one (R1 reads an
    unknown string and goes on), so it loses the count after it and every strategy collapses with the ratio."""
    if cfg.model.tiny_that_runs() is None or not cfg.pruning.placeholder:
        return None
    return (f"the tiny reasoner never saw the placeholder {cfg.pruning.placeholder!r}: it reads it as unknown tokens and "
            "loses the count after it, so this study measures the placeholder more than the steps; "
            "pruning.placeholder='' deletes the pruned steps (the README's study)")


@register_pipeline("prune_study")
def study_pipeline(job) -> StudyResult:
    """The static study on the held-out problems; writes samples, steps, summary (json, md) and the accuracy plot."""
    from pathlib import Path

    from stepentropy_rl import report
    from stepentropy_rl.data import write_jsonl
    from stepentropy_rl.driver.placement import reserve_job
    from stepentropy_rl.driver.roles import spawn_reference, spawn_rollouts, workers_runtime
    from stepentropy_rl.driver.tracking import Tracker

    cfg, run_dir = job.cfg, job.run_dir
    caveat = placeholder_caveat(cfg)
    if caveat:
        log.warning(caveat)
    placement = reserve_job(cfg, train=False)  # the engines and the reference at once (driver/placement.py)
    try:
        rollouts = spawn_rollouts(cfg, job.model_path, placement)
        reference = spawn_reference(cfg, job.model_path, placement)
        cache = CoTCache.for_job(cfg, job.model_path, runtime=workers_runtime(rollouts, reference)) \
            if cfg.pruning.cache else None
        res = run_study(cfg, job.eval_problems, rollouts, reference, job.tokenizer, job.grade, cache)
    finally:
        placement.release()
    write_jsonl(run_dir / "samples.jsonl", res.rows)
    write_jsonl(run_dir / "steps.jsonl", res.steps)
    write_jsonl(run_dir / "cots.jsonl", res.cots)
    extra = {"auroc": res.auroc, "auroc_generated": res.auroc_generated, "topk_entropy_error": res.topk_error,
             "model": job.model_path, "aggregate": cfg.pruning.aggregate, "placeholder": cfg.pruning.placeholder,
             "cots_cached": res.cots_cached,
             "full_cot_accuracy": sum(r["full_cot_correct"] for r in res.rows) / max(1, len(res.rows))}
    try:  # a failing plot or tracker costs the picture or the dashboard, not the study's results
        plot = report.plot_accuracy(run_dir, res.summary,
                                    f"step pruning, {Path(job.model_path).name}, n={len(job.eval_problems)}")
        tracker = Tracker(run_dir, cfg.trainer.logger, cfg.to_dict())
        samples = [{k: r[k] for k in ("id", "strategy", "ratio", "n_pruned", "n_steps", "thinking", "regenerated",
                                      "correct") if k in r} for r in res.rows[:SAMPLES_LOGGED]]
        tracker.results({k: v for k, v in extra.items() if isinstance(v, (int, float))},
                        {"results": res.summary, "samples": samples}, {"accuracy_vs_ratio": plot})
        tracker.finish()
    except Exception as e:
        log.warning("the study's plot or trackers failed (%s: %s); its results are written all the same",
                    type(e).__name__, e)
    # last: summary.json says the job finished (run.finished_study skips it on a rerun), so a job killed before it
    # has its plot, summary.md and tracker results made again
    report.write_summary(run_dir, res.summary, extra, res.paired)
    print(report.summary_table(res.summary))
    print(report.paired_table(res.paired))
    if caveat:
        print(f"note: {caveat}")
    print(f"AUROC (low step entropy -> labelled redundant step): gold {res.auroc:.3f}, "
          f"generated {res.auroc_generated:.3f}")
    print(f"outputs: {run_dir} (look at the CoTs: python -m stepentropy_rl.view {run_dir})")
    return res
