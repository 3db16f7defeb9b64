"""Config validation: every impossible value fails before any actor starts, with the key that holds it."""
from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from stepentropy_rl.pruning import validate_pruning
from stepentropy_rl.tasks.basket import BasketConfig
from stepentropy_rl.tasks.grading import get_grader

PIPELINES = ("prune_study",)


class ConfigError(ValueError):
    """A config value that cannot work."""


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _items(x) -> list:
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


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first impossible key."""
    _need(cfg.pipeline in PIPELINES,
          f"pipeline must be one of {PIPELINES} (choose one with +experiment=prune_sweep), got {cfg.pipeline!r}")
    if cfg.model.path is not None:
        _need(Path(cfg.model.path).expanduser().is_dir(), f"model.path: no such model directory {cfg.model.path!r}")
    else:
        _need(cfg.model.get("tiny") is not None, "model.tiny must be set when model.path is null")
    if cfg.data.path is not None:
        _need(Path(cfg.data.path).expanduser().is_file(), f"data.path: no such file {cfg.data.path!r}")
    else:
        task_config(cfg)
    try:
        get_grader(cfg.data.grader)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _need(int(cfg.data.n_eval) >= 1, f"data.n_eval must be >= 1, got {cfg.data.n_eval}")
    for strategy in _items(cfg.pruning.strategy):
        for ratio in _items(cfg.pruning.ratio):
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
