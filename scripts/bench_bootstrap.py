"""Benchmark the tiny reasoner: bootstrap time on this machine and held-out accuracy (vLLM, full CoT).

    python scripts/bench_bootstrap.py [--n 500] [--out runs/bench_bootstrap/MODEL.json] [key=value overrides ...]

Prints and saves: bootstrap seconds (measured when the cached model was trained), tokens/s, params, held-out accuracy at
greedy and at temperatures 0.6 and 1.0, the first mistake of each wrong CoT (``basket.diagnose``), mean thinking tokens,
the share of redundant steps in the model's CoTs and in the training data (at T=1.0 the model samples the distribution
it learned, so the two shares should match), the share of thinking tokens in redundant steps, the share of CoTs right at
every step, the teacher-forced share of quantities predicted from their person's name (``bootstrap.lookup_accuracy``)
beside what binding them at random scores, the share of redundant steps of each kind the model copies
(``bootstrap.copy_accuracy``), the share of last moves whose person (the only one left) it predicts, the share of moves
whose person it predicts by the move's place beside naming a person not yet handled at random, the attention its heads
pay from a listed quantity to its person (``probes``), and one sample CoT. ``data=basket`` measures the terse variant.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def out_path(out: str | None, model_path: str) -> Path:
    """``--out``, else ``runs/bench_bootstrap/<the model's folder>.json``: one file per base (a fixed name kept only
    the last seed's figures of a three-seed run)."""
    return Path(out or f"runs/bench_bootstrap/{Path(model_path).name}.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="held-out problems evaluated (default 500)")
    ap.add_argument("--out", default=None,
                    help="where the figures are saved (default runs/bench_bootstrap/<the model's folder name>.json, so "
                         "that each seed's base keeps its own)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.tiny.steps=300")
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.cot_stats import binomial_stderr, redundant_fraction, step_token_labels
    from stepentropy_rl.cot_format import split_thinking
    from stepentropy_rl.data import generated
    from stepentropy_rl.files import atomic_write_json
    from stepentropy_rl.driver.run import resolve_model
    from stepentropy_rl.tasks.basket import diagnose, label_step
    from stepentropy_rl.tasks.grading import make_grader
    from stepentropy_rl.tokenizer import load_tokenizer, prompt_ids

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base=None):
        cfg = build(compose("config", overrides=["run_dir=/tmp", "+experiment=prune_sweep", *args.overrides]))
    t0 = time.time()
    path = resolve_model(cfg)
    resolve_s = time.time() - t0
    stats = json.loads((Path(path) / "bootstrap.json").read_text())
    problems = generated(cfg.data.task, args.n, cfg.data.seed, "test")

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    llm = LLM(model=path, seed=cfg.rollout.seed, **dict(cfg.rollout.engine))
    tok = load_tokenizer(path)
    prompts = [{"prompt_token_ids": prompt_ids(tok, p.prompt)} for p in problems]
    grade = make_grader("exact")  # the answer after </think>, as the pipelines grade
    result = {"model": path, "bootstrap_s": stats["bootstrap_s"], "train_s": stats["train_s"],
              "train_tokens_per_s": round(stats["tokens"] / stats["train_s"]), "params": stats["params"],
              "final_loss": stats["final_loss"], "resolve_s_this_run": round(resolve_s, 1), "n": args.n,
              **_lookup(stats, path, cfg.data.task), **_probes(path, cfg.data.task)}
    for name, temp in (("greedy", 0.0), ("t0.6", 0.6), ("t1.0", 1.0)):
        t = time.time()
        outs = llm.generate(prompts, SamplingParams(temperature=temp, top_p=0.95 if temp == 0.6 else 1.0,
                                                    max_tokens=cfg.rollout.max_tokens,
                                                    skip_special_tokens=False), use_tqdm=False)
        texts = [o.outputs[0].text for o in outs]
        ids = [list(o.outputs[0].token_ids) for o in outs]
        steps = [s for t_ in texts for s in split_thinking(t_)[0].split("\n\n") if s.strip()]
        labels = [label_step(s)[0] for s in steps]
        right = [grade(t_, p.answer) for t_, p in zip(texts, problems)]
        acc = sum(right) / len(problems)
        result[name] = {
            "accuracy": acc, "accuracy_stderr": binomial_stderr(acc, len(problems)),
            "steps_right": sum(diagnose(p.solution, t_) is None for t_, p in zip(texts, problems)) / len(problems),
            "redundant_token_share": redundant_fraction([step_token_labels(tok, i, label_step) for i in ids]),
            "mistakes_in_wrong": dict(Counter(str(diagnose(p.solution, t_))
                                              for t_, p, r in zip(texts, problems, right) if not r)),
            "thinking_tokens": sum(len(tok(split_thinking(t_)[0], add_special_tokens=False).input_ids)
                                   for t_ in texts) / len(texts),
            "redundant_step_share": labels.count("redundant") / max(1, len(labels)),
            "unknown_step_share": labels.count("unknown") / max(1, len(labels)),
            "closed_think": sum(split_thinking(t_)[1] for t_ in texts) / len(texts),
            "gen_s": round(time.time() - t, 1),
        }
        result[name + "_sample"] = tok.decode(prompts[0]["prompt_token_ids"]) + texts[0]
    gold = [s.get("label") for p in problems for s in p.steps]
    result["data_redundant_step_share"] = gold.count("redundant") / len(gold)
    out = out_path(args.out, path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    for k, v in result.items():
        if not k.endswith("_sample"):
            print(f"{k:>28}: {v}")
    print("\nsample CoT (T=0.6):\n" + result["t0.6_sample"])
    print(f"\nsaved {out}")


def _lookup(stats: dict, path: str, task) -> dict:
    """``bootstrap.lookup_accuracy`` with its chance level, and ``bootstrap.copy_accuracy``, as the bootstrap recorded
    them or measured now (a model cached before the bootstrap recorded them)."""
    from transformers import AutoModelForCausalLM

    from stepentropy_rl.bootstrap import chance_lookup_accuracy, copy_accuracy, held_out_lookups, lookup_accuracy
    from stepentropy_rl.tokenizer import load_tokenizer

    keys = ("lookup_accuracy", "chance_lookup_accuracy", "copy_accuracy")
    if any(k not in stats for k in keys):
        model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(path)
        stats = {"lookup_accuracy": round(lookup_accuracy(model, tok, task), 4),
                 "chance_lookup_accuracy": round(chance_lookup_accuracy(held_out_lookups(task)), 4),
                 "copy_accuracy": {k: round(v, 4) for k, v in copy_accuracy(model, tok, task).items()}}
    return {k: stats[k] for k in keys}


def _probes(path: str, task) -> dict:
    """``probes``: the share of moves whose person the model predicts, by the move's place, beside what naming a
    person not yet handled at random scores; and the attention each layer's heads pay from a listed quantity to its
    person (the one-hop lookup needs a head that does)."""
    from transformers import AutoModelForCausalLM

    from stepentropy_rl.bootstrap import teacher_forced, held_out_lookups
    from stepentropy_rl.probes import chance_name_shares, last_name_share, name_shares, person_attention
    from stepentropy_rl.tokenizer import load_tokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(path)
    problems = held_out_lookups(task)
    forced = list(teacher_forced(model, tok, problems))  # no_grad inside
    names, last = name_shares(forced), last_name_share(forced)
    attention = person_attention(model, tok, problems[:64])
    return {"last_person_named": None if last is None else round(last, 4),
            "name_share_by_move": [round(v, 4) for v in names],
            "chance_name_share_by_move": [round(v, 4) for v in chance_name_shares(problems)],
            "person_attention_max": max(max(layer) for layer in attention), "person_attention": attention}


if __name__ == "__main__":
    main()
