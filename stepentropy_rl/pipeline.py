"""The driver: resolve the model, start the workers, run the configured pipeline, write the run directory."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import ray
from omegaconf import DictConfig, OmegaConf

from stepentropy_rl import report
from stepentropy_rl.bootstrap import TinyConfig, ensure_tiny_model
from stepentropy_rl.config import task_config
from stepentropy_rl.data import generated, load_jsonl, write_jsonl
from stepentropy_rl.tasks.grading import get_grader

log = logging.getLogger(__name__)


def resolve_model(cfg: DictConfig) -> str:
    """``model.path`` if set, else the cached tiny reasoner for ``model.tiny`` + ``data.task`` (trained if missing)."""
    if cfg.model.path:
        return str(Path(cfg.model.path).expanduser())
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


def run(cfg: DictConfig) -> None:
    from stepentropy_rl.cluster import init_ray, spawn_reference, spawn_rollout

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    t0 = time.time()
    model_path = resolve_model(cfg)
    problems = eval_problems(cfg)
    init_ray(cfg.cluster)
    try:
        from transformers import AutoTokenizer

        if cfg.pipeline == "prune_study":
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            rollout = spawn_rollout(cfg, model_path)
            reference = spawn_reference(cfg, model_path)
            _prune_study(cfg, run_dir, problems, rollout, reference, tokenizer, model_path)
        elif cfg.pipeline == "train":
            from stepentropy_rl.train_pipeline import run_training

            run_training(cfg, run_dir, model_path, train_problems(cfg), problems, get_grader(cfg.data.grader))
    finally:
        ray.shutdown()
    log.info("done in %.0f s; outputs in %s", time.time() - t0, run_dir)


def _prune_study(cfg, run_dir, problems, rollout, reference, tokenizer, model_path) -> None:
    from stepentropy_rl.prune_study import run_study

    res = run_study(cfg, problems, rollout, reference, tokenizer, get_grader(cfg.data.grader))
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
