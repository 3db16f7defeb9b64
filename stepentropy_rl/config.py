"""Config validation: every impossible value fails before any actor starts, with the key that holds it."""
from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from stepentropy_rl.pruning import validate_pruning
from stepentropy_rl.tasks.basket import BasketConfig
from stepentropy_rl.tasks.grading import get_grader

PIPELINES = ("prune_study", "train")


class ConfigError(ValueError):
    """A config value that cannot work."""


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def as_list(x) -> list:
    """A config value that may be one item or a list of them, as a list."""
    return list(x) if isinstance(x, (list, tuple, ListConfig)) else [x]


def task_config(cfg: DictConfig) -> BasketConfig:
    raw = OmegaConf.to_container(cfg.data.task, resolve=True)
    raw["ops"] = tuple(raw.get("ops", ("add",)))
    try:
        task = BasketConfig(**raw)
    except TypeError as e:
        raise ConfigError(f"data.task: {e}") from None
    try:
        task.validate()
    except ValueError as e:
        raise ConfigError(f"data.{e}") from None
    return task


def validate(cfg: DictConfig, check_paths: bool = True) -> None:
    """Raise ConfigError naming the first impossible key. ``check_paths=False`` checks a config for another
    machine (model and data files need not exist here)."""
    _need(cfg.pipeline in PIPELINES,
          f"pipeline must be one of {PIPELINES} (choose one with +experiment=prune_sweep), got {cfg.pipeline!r}")
    if cfg.model.path is not None:
        _need(not check_paths or Path(cfg.model.path).expanduser().is_dir(),
              f"model.path: no such model directory {cfg.model.path!r}")
    else:
        _need(cfg.model.get("tiny") is not None, "model.tiny must be set when model.path is null")
    if cfg.data.path is not None:
        _need(not check_paths or Path(cfg.data.path).expanduser().is_file(), f"data.path: no such file {cfg.data.path!r}")
    else:
        task_config(cfg)
    try:
        get_grader(cfg.data.grader)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _need(int(cfg.data.n_eval) >= 1, f"data.n_eval must be >= 1, got {cfg.data.n_eval}")
    for strategy in as_list(cfg.pruning.strategy):
        for ratio in as_list(cfg.pruning.ratio):
            try:
                validate_pruning(strategy, ratio)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    _need(cfg.pruning.aggregate in ("sum", "mean"),
          f"pruning.aggregate must be 'sum' or 'mean', got {cfg.pruning.aggregate!r}")
    _need(bool(cfg.pruning.delimiter), "pruning.delimiter must be a non-empty string")
    r = cfg.rollout
    for key in ("temperature", "answer_temperature"):
        v = float(r[key])
        _need(math.isfinite(v) and v >= 0, f"rollout.{key} must be >= 0, got {r[key]}")
    _need(0 < float(r.top_p) <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}")
    for key in ("max_tokens", "answer_max_tokens"):
        _need(int(r[key]) >= 1, f"rollout.{key} must be >= 1, got {r[key]}")
    _need(int(cfg.cluster.rollout.num_workers) >= 1,
          f"cluster.rollout.num_workers must be >= 1, got {cfg.cluster.rollout.num_workers}")
    if cfg.pipeline == "train":
        validate_training(cfg)


def validate_training(cfg: DictConfig) -> None:
    from stepentropy_rl.algorithms import known_estimators
    from stepentropy_rl.phase import STAGES, PhaseConfig
    from stepentropy_rl.rewards import stage_rewards

    a, t = cfg.algorithm, cfg.trainer
    for stage in STAGES:
        _need(stage in a.adv_estimator and a.adv_estimator[stage] in known_estimators(),
              f"algorithm.adv_estimator.{stage} must be one of {known_estimators()}, got "
              f"{a.adv_estimator.get(stage)!r}")
        _need(stage in a.temperature and 0 <= float(a.temperature[stage]) <= 5,
              f"algorithm.temperature.{stage} must be in [0, 5]")
    _need(int(a.n_samples) >= 2, f"algorithm.n_samples must be >= 2 (a GRPO group), got {a.n_samples}")
    _need(int(a.prompts_per_step) >= 1, f"algorithm.prompts_per_step must be >= 1, got {a.prompts_per_step}")
    _need(a.prompts_per_step * a.n_samples >= cfg.cluster.learner.world_size,
          "algorithm.prompts_per_step * n_samples must be >= cluster.learner.world_size")
    _need(float(a.kl_coef) >= 0, f"algorithm.kl_coef must be >= 0, got {a.kl_coef}")
    for check, where in ((lambda: PhaseConfig(**dict(a.phase)).validate(), "algorithm.phase"),
                         (lambda: stage_rewards(OmegaConf.to_container(cfg.reward, resolve=True)), "reward"),
                         (lambda: validate_pruning("low", t.prune.ratio), "trainer.prune")):
        try:
            check()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
    for key in ("steps", "save_every", "max_tokens"):
        _need(int(t.grpo[key]) >= 1, f"trainer.grpo.{key} must be >= 1, got {t.grpo[key]}")
    _need(int(t.n_train) >= 1, f"trainer.n_train must be >= 1, got {t.n_train}")
    _need(int(cfg.cluster.learner.world_size) >= 1,
          f"cluster.learner.world_size must be >= 1, got {cfg.cluster.learner.world_size}")
    _need(cfg.cluster.learner.backend in ("gloo", "nccl"),
          f"cluster.learner.backend must be gloo or nccl, got {cfg.cluster.learner.backend!r}")
    dtypes = ("float32", "bfloat16", "float16")
    _need(cfg.cluster.learner.dtype in dtypes,
          f"cluster.learner.dtype must be one of {dtypes}, got {cfg.cluster.learner.dtype!r}")
    _need(cfg.cluster.learner.get("param_dtype") in (None, *dtypes),
          f"cluster.learner.param_dtype must be null or one of {dtypes}, got {cfg.cluster.learner.get('param_dtype')!r}")
