"""The driver: resolve the model, start the workers, run the configured pipeline, write the run directory."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import ray
from omegaconf import DictConfig, OmegaConf

from stepentropy_rl import report
from stepentropy_rl.bootstrap import TinyConfig, ensure_tiny_model
from stepentropy_rl.config import check_context, task_config
from stepentropy_rl.data import generated, load_jsonl, write_jsonl
from stepentropy_rl.tasks.grading import make_grader
from stepentropy_rl.tokenizer import load_tokenizer, prompt_ids

log = logging.getLogger(__name__)


def resolve_model(cfg: DictConfig) -> str:
    """``model.path`` if set; else the R1-format stand-in for ``model.standin``; else the cached tiny reasoner for
    ``model.tiny`` + ``data.task`` (each built if missing)."""
    if cfg.model.path:
        return str(Path(cfg.model.path).expanduser())
    if cfg.model.get("standin"):
        from stepentropy_rl.r1_standin import StandinConfig, ensure_r1_standin

        path = ensure_r1_standin(StandinConfig(**OmegaConf.to_container(cfg.model.standin, resolve=True)))
        log.info("R1-format stand-in: %s", path)
        return str(path)
    tiny = OmegaConf.to_container(cfg.model.tiny, resolve=True)
    path = ensure_tiny_model(TinyConfig(task=task_config(cfg), **tiny))
    log.info("tiny reasoner: %s", path)
    return str(path)


def eval_problems(cfg: DictConfig):
    if cfg.data.path:
        return load_jsonl(cfg.data.path)[: cfg.data.n_eval]
    return generated(task_config(cfg), cfg.data.n_eval, cfg.data.seed, "test")


def train_problems(cfg: DictConfig):
    if cfg.data.get("train_path"):
        return load_jsonl(cfg.data.train_path)[: cfg.trainer.n_train]
    return generated(task_config(cfg), cfg.trainer.n_train, cfg.data.seed, "train")


def check_prompt_context(cfg: DictConfig, model_path: str, tok, problems) -> None:
    """Before any actor starts: the longest chat-formatted prompt plus each generation budget must fit the engine's
    context (``config.check_context``), or vLLM would cut responses short without an error."""
    from transformers import AutoConfig

    longest = max((len(prompt_ids(tok, p.prompt)) for p in problems), default=0)
    check_context(cfg, longest, getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None))


def run(cfg: DictConfig) -> None:
    from stepentropy_rl.cluster import check_shared_run_dir, init_ray, spawn_reference, spawn_rollout

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    t0 = time.time()
    model_path = resolve_model(cfg)
    problems = eval_problems(cfg)
    train = train_problems(cfg) if cfg.pipeline == "train" else []
    tokenizer = load_tokenizer(model_path)
    check_prompt_context(cfg, model_path, tokenizer, problems + train)
    grade = make_grader(cfg.data.grader, cfg.data.grade_span)
    init_ray(cfg.cluster)
    try:
        check_shared_run_dir(run_dir)
        if cfg.pipeline == "prune_study":
            rollout = spawn_rollout(cfg, model_path)
            reference = spawn_reference(cfg, model_path)
            _prune_study(cfg, run_dir, problems, rollout, reference, tokenizer, model_path, grade)
        elif cfg.pipeline == "train":
            from stepentropy_rl.train_pipeline import run_training

            run_training(cfg, run_dir, model_path, train, problems, grade)
    finally:
        ray.shutdown()
    log.info("done in %.0f s; outputs in %s", time.time() - t0, run_dir)


def _prune_study(cfg, run_dir, problems, rollout, reference, tokenizer, model_path, grade) -> None:
    from stepentropy_rl.prune_study import run_study

    res = run_study(cfg, problems, rollout, reference, tokenizer, grade)
    write_jsonl(run_dir / "samples.jsonl", res.rows)
    write_jsonl(run_dir / "steps.jsonl", res.steps)
    extra = {"auroc": res.auroc, "auroc_generated": res.auroc_generated, "topk_entropy_error": res.topk_error,
             "model": model_path,
             "aggregate": cfg.pruning.aggregate, "placeholder": cfg.pruning.placeholder,
             "full_cot_accuracy": sum(r["full_cot_correct"] for r in res.rows) / max(1, len(res.rows))}
    report.write_summary(run_dir, res.summary, extra)
    report.plot_accuracy(run_dir, res.summary, f"step pruning, {Path(model_path).name}, n={len(problems)}")
    print(report.summary_table(res.summary))
    print(f"AUROC (low step entropy -> labelled redundant step): gold {res.auroc:.3f}, "
          f"generated {res.auroc_generated:.3f}")
    print(f"outputs: {run_dir}")
