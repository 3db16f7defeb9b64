"""The one driver entry: resolve the model, load the data, start Ray, run the registered pipeline."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from omegaconf import OmegaConf

from stepentropy_rl.bootstrap import ensure_tiny_model
from stepentropy_rl.config import JobConfig, check_context
from stepentropy_rl.data import generated, load_jsonl
from stepentropy_rl.tasks.grading import make_grader
from stepentropy_rl.tokenizer import load_tokenizer, prompt_ids

log = logging.getLogger(__name__)
BUILTIN_PIPELINES = ("stepentropy_rl.driver.study", "stepentropy_rl.driver.train")


def resolve_model(cfg: JobConfig) -> str:
    """``model.path`` if set; else the R1-format stand-in for ``model.standin``; else the cached tiny reasoner for
    ``model.tiny`` + ``data.task`` (each built if missing)."""
    if cfg.model.path:
        return str(Path(cfg.model.path).expanduser())
    if cfg.model.standin is not None:
        from stepentropy_rl.r1_standin import ensure_r1_standin

        path = ensure_r1_standin(cfg.model.standin)
        log.info("R1-format stand-in: %s", path)
        return str(path)
    path = ensure_tiny_model(dataclasses.replace(cfg.model.tiny, task=cfg.data.task))
    log.info("tiny reasoner: %s", path)
    return str(path)


def eval_problems(cfg: JobConfig):
    if cfg.data.path:
        return load_jsonl(cfg.data.path)[: cfg.data.n_eval]
    return generated(cfg.data.task, cfg.data.n_eval, cfg.data.seed, "test")


def train_problems(cfg: JobConfig):
    if cfg.data.train_path:
        return load_jsonl(cfg.data.train_path)[: cfg.trainer.n_train]
    return generated(cfg.data.task, cfg.trainer.n_train, cfg.data.seed, "train")


def check_prompt_context(cfg: JobConfig, model_path: str, tok, problems) -> None:
    """Before any actor starts: the longest chat-formatted prompt plus each generation budget must fit the engine's
    context (``config.check_context``), or vLLM would cut responses short without an error."""
    from transformers import AutoConfig

    longest = max((len(prompt_ids(tok, p.prompt)) for p in problems), default=0)
    check_context(cfg, longest, getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None))


@dataclass
class Job:
    """What every pipeline starts from: the config, its run directory, the model, one tokenizer, the problems
    (``train`` empty unless the pipeline asked for them) and the span-aware grader."""

    cfg: JobConfig
    run_dir: Path
    model_path: str
    tokenizer: object
    eval_problems: list
    train_problems: list
    grade: object


def pipeline_for(cfg: JobConfig):
    """The registered pipeline named by ``cfg.pipeline``; ConfigError listing the known ones otherwise."""
    import importlib

    from stepentropy_rl.config import ConfigError
    from stepentropy_rl.driver import PIPELINES

    for module in BUILTIN_PIPELINES:
        importlib.import_module(module)  # pipelines register on import

    if cfg.pipeline not in PIPELINES:
        raise ConfigError(f"pipeline must be one of {sorted(PIPELINES)} (choose one with +experiment=NAME, e.g. "
                          f"prune_sweep or entropy_guided), got {cfg.pipeline!r}")
    return PIPELINES[cfg.pipeline]


def prepare(cfg: JobConfig, pipeline) -> Job:
    """Write the config, resolve the model, load the problems and the tokenizer, and check that every prompt and
    generation budget fits the engine's context: all before any actor starts."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg.to_dict()))
    model_path = resolve_model(cfg)
    problems = eval_problems(cfg)
    train = train_problems(cfg) if pipeline.train_data else []
    tokenizer = load_tokenizer(model_path)
    check_prompt_context(cfg, model_path, tokenizer, problems + train)
    return Job(cfg, run_dir, model_path, tokenizer, problems, train, make_grader(cfg.data.grader, cfg.data.grade_span))


def run(cfg: JobConfig) -> None:
    """The one driver entry: prepare the job, start (or join) Ray, run the configured pipeline."""
    from stepentropy_rl.driver.roles import check_shared_run_dir, init_ray

    t0 = time.time()
    pipeline = pipeline_for(cfg)
    job = prepare(cfg, pipeline)
    init_ray(cfg.cluster)
    try:
        check_shared_run_dir(job.run_dir)
        pipeline(job)
    finally:
        ray.shutdown()
    log.info("done in %.0f s; outputs in %s", time.time() - t0, job.run_dir)
